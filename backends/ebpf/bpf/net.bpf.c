/* SPDX-License-Identifier: GPL-2.0 */
/* sluice at the node's devices (tc ingress), one object of four (pod.bpf.c, sock.bpf.c, lookup.bpf.c).
 *
 * sluice_from_net: NodePort, ExternalIPs, LoadBalancer and HostPort frontends; source ranges;
 * a local backend is DNATed only (the client address is kept), a backend on another node is
 * DNATed and SNATed to the node IP and sent back out; replies of SNATed flows are translated back.
 * Everything else passes untouched with TC_ACT_UNSPEC (TCX_NEXT under TCX). */
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

#include "progs/net.h"
