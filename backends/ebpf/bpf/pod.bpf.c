/* SPDX-License-Identifier: GPL-2.0 */
/* sluice at the pod veths (tc on the host side), one object of four (net.bpf.c: node devices;
 * sock.bpf.c: cgroup socket hooks; lookup.bpf.c: the node's socket lookup).
 *
 * sluice_from_pod (ingress, packets leaving the pod): a new flow to a service frontend gets a
 * backend (ClientIP affinity first, else random or Maglev), recorded in the forward and reverse
 * conntrack maps; every packet of the flow is DNATed to that backend; the pod's egress policy
 * and the backend's ingress policy are enforced. Replies of flows that came from outside the node
 * are reverse-NATed here and sent straight out.
 * sluice_to_pod (egress, packets entering the pod): replies of pod flows get their source
 * rewritten back to the frontend (reverse NAT); the pod's ingress policy.
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

/* Every program file declares every map (lib/maps.h); maps are pinned by name, so the objects
 * loaded from the four files share one set of maps in the node's pin directory. */
char LICENSE[] SEC("license") = "GPL";

#include "progs/pod.h"
