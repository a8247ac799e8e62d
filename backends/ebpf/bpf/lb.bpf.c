/* SPDX-License-Identifier: GPL-2.0 */
/* sluice service load balancing.
 *
 * Per packet, at the pod veths (tc on the host side):
 * sluice_from_pod (ingress, packets leaving the pod): a new flow to a service frontend gets a
 * backend (ClientIP affinity first, else random), recorded in the forward and reverse
 * conntrack maps; every packet of the flow is DNATed to that backend. Replies of flows that came
 * from outside the node are reverse-NATed here and sent straight out.
 * sluice_to_pod (egress, packets entering the pod): replies of pod flows get their source
 * rewritten back to the frontend (reverse NAT).
 * Per packet, at the node's devices (tc ingress):
 * sluice_from_net: NodePort, ExternalIPs, LoadBalancer and HostPort frontends; source ranges;
 * a local backend is DNATed only (the client address is kept), a backend on another node is
 * DNATed and SNATed to the node IP and sent back out; replies of SNATed flows are translated back.
 * Per socket, for host processes (cgroup v2 hooks on the node's cgroup):
 * connect4/sendmsg4 translate a frontend to a backend before any packet exists;
 * getpeername4/recvmsg4 show the frontend to the application again.
 *
 * Everything else passes untouched with TC_ACT_UNSPEC (TCX_NEXT under TCX): other programs
 * attached after ours still see it. Rewritten packets end the chain with TC_ACT_OK or a redirect. */
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
#include "lib/packet.h"
#include "lib/lb.h"
#include "lib/nat.h"

char LICENSE[] SEC("license") = "GPL";

/* The programs, one file per hook. */
#include "progs/pod.h"
#include "progs/net.h"
#include "progs/sock.h"
