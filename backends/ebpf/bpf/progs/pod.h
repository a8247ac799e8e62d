/* SPDX-License-Identifier: GPL-2.0 */
/* tc programs on a pod's host veth: sluice_from_pod (ingress) and sluice_to_pod (egress). */
#ifndef SLUICE_PROGS_POD_H
#define SLUICE_PROGS_POD_H

#include "../lib/lb.h"
#include "../lib/nat.h"
#include "../lib/l7.h"
#include "../lib/trace.h"

SEC("classifier")
int sluice_from_pod(struct __sk_buff *skb)
{
	struct flow_key k, pk;
	struct nat_val *be;
	struct nat_val chosen = {};
	__u32 slot = 0;
	int syn, v;

	if (parse_flow(skb, &k, &syn)) {
		/* Not TCP or UDP: policed all the same (an isolated pod sends no SCTP or ICMP that no
		 * rule allows). */
		if (!parse_other(skb, &k) && !pol_pass(skb->ifindex, POL_EGRESS, &k, k.daddr, k.dport, 0, 0))
			return TC_ACT_SHOT;
		return PASS;
	}
	/* A server's reply to the L7 proxy's upstream connection (addressed to a client pod). */
	if (l7_upstream_reply(skb, &k, syn))
		return TC_ACT_OK;
	if (!syn) {
		/* The reply of a flow that came from outside the node to this (local) backend. */
		struct nat_val *r = bpf_map_lookup_elem(&sluice_rnat, &k);
		if (r && (r->flags & NAT_F_HAIRPIN)) {
			/* A hairpin reply (pod:bport -> HAIRPIN:sport): from the frontend, to the pod. */
			__u32 pod = k.saddr, front = r->addr;
			__u16 fport = r->port;
			if (rewrite(skb, k.proto, IP_SRC_OFF, k.saddr, front, L4_OFF, k.sport, fport) ||
			    rewrite(skb, k.proto, IP_DST_OFF, k.daddr, pod, L4_OFF + 2, k.dport, k.dport))
				return TC_ACT_SHOT;
			return back_into_pod(skb);
		}
		if (r && (r->flags & NAT_F_EXTERNAL)) {
			__u32 front = r->addr;
			if (rewrite(skb, k.proto, IP_SRC_OFF, k.saddr, r->addr, L4_OFF, k.sport, r->port))
				return TC_ACT_SHOT;
			return fib_redirect(skb, front, k.daddr);
		}
	}
	be = bpf_map_lookup_elem(&sluice_ct, &k);
	if (syn) {
		/* A SYN opens a new connection even when an old entry for the same ports is still in
		 * the LRU: pick afresh (the old backend may be gone). */
		be = NULL;
	} else if (!be && k.proto == IPPROTO_TCP) {
		/* Mid-stream without an entry: a connection another dataplane (iptables) NATed.
		 * Kernel conntrack keeps serving it, so established connections survive moving
		 * ClusterIP between backends. (Or a connection handed to the L7 proxy.) */
		v = l7_from_pod(skb, &k, syn);
		if (v == PV_PROXY)
			return l7_redirect(skb, &k, syn);
		return v == PV_PASS ? PASS : TC_ACT_SHOT;
	}
	if (!be) {
		struct svc_key sk = { .vip = k.daddr, .port = k.dport, .proto = k.proto };
		struct svc_val *svc = bpf_map_lookup_elem(&sluice_svc, &sk);
		struct backend_val *b;

		if (!svc || !(svc->flags & SVC_F_TC)) {
			/* A new TCP connection not to a frontend: any reverse-NAT entry left for its
			 * reply tuple by an earlier service flow on the same ports is stale, and would
			 * rewrite this connection's replies. So is a conntrack entry for its own tuple,
			 * left by a connection eBPF served before the frontend moved to another
			 * dataplane: the rest of this connection (served by iptables) must not be
			 * DNATed here to that earlier connection's backend. */
			if (k.proto == IPPROTO_TCP) {
				struct flow_key rk = { .saddr = k.daddr, .daddr = k.saddr, .sport = k.dport, .dport = k.sport, .proto = k.proto };
				bpf_map_delete_elem(&sluice_rnat, &rk);
				bpf_map_delete_elem(&sluice_ct, &k);
			}
			v = l7_from_pod(skb, &k, syn);
			if (v != PV_DROP)
				trace_new(skb, &k, TRACE_FROM_ENDPOINT, 0, 0);
			if (v == PV_PASS)
				trace_new(skb, &k, TRACE_TO_STACK, 0, 0);
			if (v == PV_PROXY)
				return l7_redirect(skb, &k, syn);
			return v == PV_PASS ? PASS : TC_ACT_SHOT;
		}
		if (!source_allowed(svc, k.saddr))
			return lb_drop(skb, &k, LB_AT_POD, DROP_LB_SRC_RANGE, syn);
		b = choose(k.saddr, svc, &slot, flow_hash(&k));
		if (!b) /* a frontend without endpoints refuses, as kube-proxy's REJECT */
			return lb_drop(skb, &k, LB_AT_POD, DROP_NO_SERVICE_BACKEND, syn);
		if (b->addr == k.saddr && svc->backend_count > 1) {
			/* A pod is balanced to itself only when it is the only backend: take the next
			 * one (hairpin needs a second NAT). */
			struct backend_key bk = { .service_id = svc->service_id, .slot = slot % svc->backend_count + 1 };
			struct backend_val *next = bpf_map_lookup_elem(&sluice_backends, &bk);
			if (next)
				b = next;
		}
		chosen.addr = b->addr;
		chosen.port = b->port;
		if (b->addr == k.saddr) {
			/* Hairpin: the reply tuple is (pod:bport -> HAIRPIN:sport). */
			struct flow_key rk = { .saddr = b->addr, .daddr = bpf_htonl(HAIRPIN_ADDR_HOST_ORDER), .sport = b->port, .dport = k.sport, .proto = k.proto };
			struct nat_val front = { .addr = k.daddr, .port = k.dport, .flags = NAT_F_HAIRPIN };
			chosen.flags = NAT_F_HAIRPIN;
			bpf_map_update_elem(&sluice_rnat, &rk, &front, BPF_ANY);
		} else {
			struct flow_key rk = { .saddr = b->addr, .daddr = k.saddr, .sport = b->port, .dport = k.sport, .proto = k.proto };
			struct nat_val front = { .addr = k.daddr, .port = k.dport };
			bpf_map_update_elem(&sluice_rnat, &rk, &front, BPF_ANY);
		}
		bpf_map_update_elem(&sluice_ct, &k, &chosen, BPF_ANY);
		be = &chosen;
	}
	if (be->flags & NAT_F_HAIRPIN) {
		__u32 addr = be->addr;
		__u16 port = be->port;
		trace_new(skb, &k, TRACE_FROM_ENDPOINT, addr, port);
		if (rewrite(skb, k.proto, IP_DST_OFF, k.daddr, addr, L4_OFF + 2, k.dport, port) ||
		    rewrite(skb, k.proto, IP_SRC_OFF, k.saddr, bpf_htonl(HAIRPIN_ADDR_HOST_ORDER), L4_OFF, k.sport, k.sport))
			return TC_ACT_SHOT;
		/* Straight back into the pod (routing would see its own address as the destination
		 * of a packet arriving from it). */
		return back_into_pod(skb);
	}
	/* Egress policy sees the backend, as it would after iptables' DNAT; so does the L7 proxy
	 * (its socket's address is the backend's). */
	pk = k;
	pk.daddr = be->addr;
	pk.dport = be->port;
	v = l7_from_pod(skb, &pk, syn);
	if (v == PV_DROP)
		return TC_ACT_SHOT;
	/* The frontend the pod asked for, and the backend it gets. */
	trace_new(skb, &k, TRACE_FROM_ENDPOINT, pk.daddr, pk.dport);
	if (rewrite(skb, k.proto, IP_DST_OFF, k.daddr, be->addr, L4_OFF + 2, k.dport, be->port))
		return TC_ACT_SHOT;
	if (v == PV_PROXY)
		return l7_redirect(skb, &pk, syn);
	trace_new(skb, &pk, TRACE_TO_STACK, 0, 0); /* as the stack gets it: to the backend */
	return TC_ACT_OK;
}

SEC("classifier")
int sluice_to_pod(struct __sk_buff *skb)
{
	struct flow_key k;
	struct nat_val *front;
	int syn;

	if (parse(skb, &k)) {
		if (!parse_other(skb, &k) && !from_own_node(skb, k.saddr) &&
		    !pol_pass(skb->ifindex, POL_INGRESS, &k, k.saddr, k.dport, 0, 0))
			return TC_ACT_SHOT;
		return PASS;
	}
	syn = k.proto == IPPROTO_TCP ? tcp_syn(skb) : 0;
	/* Ingress policy, before reverse NAT: the source as it arrived (a hairpin flow is the pod
	 * reaching itself; traffic from this node always passes). */
	if (k.saddr != bpf_htonl(HAIRPIN_ADDR_HOST_ORDER) && !from_own_node(skb, k.saddr) &&
	    !pol_pass(skb->ifindex, POL_INGRESS, &k, k.saddr, k.dport, syn > 0, 0))
		return TC_ACT_SHOT;
	if (k.saddr != bpf_htonl(HAIRPIN_ADDR_HOST_ORDER))
		trace_new(skb, &k, TRACE_TO_ENDPOINT, 0, 0); /* (a hairpin was traced leaving) */
	front = bpf_map_lookup_elem(&sluice_rnat, &k);
	if (!front || (front->flags & (NAT_F_EXTERNAL | NAT_F_HAIRPIN)))
		return PASS;
	if (rewrite(skb, k.proto, IP_SRC_OFF, k.saddr, front->addr, L4_OFF, k.sport, front->port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

#endif
