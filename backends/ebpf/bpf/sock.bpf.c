/* SPDX-License-Identifier: GPL-2.0 */
/* sluice socket load balancing for host processes (cgroup v2 hooks on the node's cgroup), one
 * object of four (pod.bpf.c, net.bpf.c, lookup.bpf.c). Its own object: a kernel without these hooks keeps the
 * tc datapath (the plan then keeps socket LB off eBPF).
 *
 * connect4/sendmsg4 translate a frontend to a backend before any packet exists;
 * getpeername4/recvmsg4 show the frontend to the application again. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "lib/layout.h"
#include "lib/maps.h"

/* Every program file declares every map (lib/maps.h); maps are pinned by name, so the objects
 * loaded from the four files share one set of maps in the node's pin directory. */
char LICENSE[] SEC("license") = "GPL";

#include "progs/sock.h"
