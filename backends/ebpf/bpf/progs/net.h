/* SPDX-License-Identifier: GPL-2.0 */
/* tc program on the node's devices: sluice_from_net (NodePort, ExternalIPs, LoadBalancer, HostPort;
 * to an L7-policed local backend: untranslated to the L7 proxy);
 * traces new connections to those frontends (from-network, and to-network when forwarded). */
#ifndef SLUICE_PROGS_NET_H
#define SLUICE_PROGS_NET_H

#include "../lib/lb.h"
#include "../lib/nat.h"
#include "../lib/l7.h"
#include "../lib/trace.h"

/* Forward a flow from outside the node to a backend on another node: DNAT, SNAT to the node IP,
 * out again. */
static __always_inline int forward_remote(struct __sk_buff *skb, struct flow_key *k, struct nat_val *ct, int finrst)
{
	__u32 zero = 0;
	struct node_cfg *node = bpf_map_lookup_elem(&sluice_node, &zero);
	struct snat_val *sv;

	if (!node || !node->node_ip)
		return TC_ACT_SHOT;
	struct flow_key rk = { .saddr = ct->addr, .daddr = node->node_ip, .sport = ct->port, .dport = ct->snat_port, .proto = k->proto };
	sv = bpf_map_lookup_elem(&sluice_snat, &rk);
	if (sv)
		snat_touch(sv, finrst);
	if (rewrite(skb, k->proto, IP_DST_OFF, k->daddr, ct->addr, L4_OFF + 2, k->dport, ct->port))
		return TC_ACT_SHOT;
	if (rewrite(skb, k->proto, IP_SRC_OFF, k->saddr, node->node_ip, L4_OFF, k->sport, ct->snat_port))
		return TC_ACT_SHOT;
	return fib_redirect(skb, node->node_ip, ct->addr);
}

/* Whether the device frontends are another dataplane's (NODE_F_DEVICES_DRAIN). */
static __always_inline int draining(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct node_cfg *node = bpf_map_lookup_elem(&sluice_node, &zero);

	return node && (node->flags & NODE_F_DEVICES_DRAIN);
}

SEC("classifier")
int sluice_from_net(struct __sk_buff *skb)
{
	struct flow_key k;
	struct nat_val *be;
	struct snat_val *sv;
	struct nat_val chosen = {};
	__u32 slot = 0;
	__u32 snat_ip = 0;
	int syn, finrst;

	if (parse_flow(skb, &k, &syn))
		return PASS;
	/* The L7 proxy's: a server's reply to its upstream connection, or a connection to a local
	 * endpoint whose ingress rules send it to the proxy. */
	if (l7_upstream_reply(skb, &k, syn))
		return TC_ACT_OK;
	if (l7_from_net(&k, syn))
		return l7_redirect(skb, &k, syn);
	/* A reply of a flow this node SNATed: back to the client, from the frontend. */
	finrst = tcp_fin_rst(skb, k.proto);
	sv = syn ? NULL : bpf_map_lookup_elem(&sluice_snat, &k);
	/* A host connection that took the port after our flow closed: its packet, not ours. So is
	 * any reply on a closed flow's port while draining: netfilter's masquerade (kube-proxy's,
	 * or the iptables backend's) picks ports without seeing ours. */
	if (sv && (sv->flags & SNAT_F_CLOSING) &&
	    (draining(skb) || host_owns(skb, k.proto, k.saddr, k.sport, k.daddr, k.dport)))
		sv = NULL;
	if (sv) {
		__u32 client = sv->client, front = sv->front;
		snat_touch(sv, finrst);
		__u16 cport = sv->client_port, fport = sv->front_port;
		if (rewrite(skb, k.proto, IP_SRC_OFF, k.saddr, front, L4_OFF, k.sport, fport))
			return TC_ACT_SHOT;
		if (rewrite(skb, k.proto, IP_DST_OFF, k.daddr, client, L4_OFF + 2, k.dport, cport))
			return TC_ACT_SHOT;
		return fib_redirect(skb, front, client);
	}
	be = syn ? NULL : bpf_map_lookup_elem(&sluice_ct, &k);
	if (!be) {
		struct svc_key sk = { .vip = k.daddr, .port = k.dport, .proto = k.proto };
		struct svc_val *svc;
		struct backend_val *b;

		if (k.proto == IPPROTO_TCP && !syn)
			return PASS; /* mid-stream, not ours (or NATed by another dataplane) */
		svc = bpf_map_lookup_elem(&sluice_svc, &sk);
		if (!svc || !(svc->flags & SVC_F_EXTERNAL)) {
			/* As at the pod veth: an entry for this tuple from a connection served before
			 * the frontend moved away must not catch this one's later packets; nor may a
			 * reverse-NAT entry for its reply tuple, left by an earlier NodePort flow from
			 * the same address and port to a local backend (another node SNATing to its
			 * own address can pick the port its host used for that flow), rewrite this
			 * connection's replies to the frontend. */
			if (k.proto == IPPROTO_TCP) {
				struct flow_key rk = { .saddr = k.daddr, .daddr = k.saddr, .sport = k.dport, .dport = k.sport, .proto = k.proto };
				bpf_map_delete_elem(&sluice_ct, &k);
				bpf_map_delete_elem(&sluice_rnat, &rk);
			}
			return PASS;
		}
		if (!source_allowed(svc, k.saddr))
			return lb_drop(skb, &k, LB_AT_DEVICE, DROP_LB_SRC_RANGE, syn);
		b = choose(k.saddr, svc, &slot, flow_hash(&k));
		if (!b)
			return lb_drop(skb, &k, LB_AT_DEVICE, DROP_NO_SERVICE_BACKEND, syn);
		chosen.addr = b->addr;
		chosen.port = b->port;
		if ((b->flags & BE_F_LOCAL) && k.proto == IPPROTO_TCP && l7_port()) {
			/* A local backend whose ingress rules send this client to the L7 proxy: the
			 * connection goes to the proxy untranslated (its socket then holds the frontend's
			 * address, so its replies leave from the frontend with no reverse NAT here); the
			 * proxy picks a local backend itself (the view's external l7_frontends). */
			struct flow_key tk = { .saddr = k.saddr, .daddr = b->addr, .sport = k.sport, .dport = b->port, .proto = k.proto };
			if (l7_ingress_wants(&tk)) {
				l7_remember(&k, 1);
				trace_new(skb, &k, TRACE_FROM_NETWORK, b->addr, b->port);
				return l7_redirect(skb, &k, syn);
			}
		}
		if (b->flags & BE_F_LOCAL) {
			/* Local backend: DNAT only, the pod sees the client's address. */
			struct flow_key rk = { .saddr = b->addr, .daddr = k.saddr, .sport = b->port, .dport = k.sport, .proto = k.proto };
			struct nat_val front = { .addr = k.daddr, .port = k.dport, .flags = NAT_F_EXTERNAL };
			bpf_map_update_elem(&sluice_rnat, &rk, &front, BPF_ANY);
		} else {
			__u32 zero = 0;
			struct node_cfg *node = bpf_map_lookup_elem(&sluice_node, &zero);
			__u32 now = now_s();
			struct snat_val back = { .client = k.saddr, .front = k.daddr, .client_port = k.sport, .front_port = k.dport, .last_s = now };
			int i;

			if (!node || !node->node_ip)
				return TC_ACT_SHOT;
			for (i = 0; i < 16; i++) {
				/* First the client's own port, as MASQUERADE does: the backend then sees
				 * the client's port reuse and timestamps, and its TIME_WAIT accepts a
				 * new connection on the same tuple. Then random ports. */
				__u16 p = i == 0 ? k.sport : bpf_htons(SNAT_PORT_LO + bpf_get_prandom_u32() % SNAT_PORT_N);
				struct flow_key rk = { .saddr = b->addr, .daddr = node->node_ip, .sport = b->port, .dport = p, .proto = k.proto };
				struct snat_val *old;
				__u64 how = BPF_NOEXIST;
				if (host_owns(skb, k.proto, b->addr, b->port, node->node_ip, p))
					continue;
				old = bpf_map_lookup_elem(&sluice_snat, &rk);
				if (old) {
					/* The same client flow again (its port reused), or a port whose
					 * flow closed a TIME_WAIT ago or went idle, serves the new one. */
					__u32 age = now - old->last_s;
					int same = old->client == k.saddr && old->client_port == k.sport && old->front == k.daddr &&
						   old->front_port == k.dport;
					if (!same && !((old->flags & SNAT_F_CLOSING) && age >= SNAT_CLOSED_S) && age < SNAT_IDLE_S)
						continue;
					how = BPF_EXIST;
				}
				if (!bpf_map_update_elem(&sluice_snat, &rk, &back, how)) {
					chosen.snat_port = p;
					break;
				}
			}
			if (!chosen.snat_port)
				return TC_ACT_SHOT; /* no free port for this backend */
			snat_ip = node->node_ip;
		}
		bpf_map_update_elem(&sluice_ct, &k, &chosen, BPF_ANY);
		be = &chosen;
		/* A new connection from outside: traced arriving (with the backend it was given) and,
		 * when it leaves for another node, leaving as the backend will see it. */
		trace_new(skb, &k, TRACE_FROM_NETWORK, chosen.addr, chosen.port);
		if (snat_ip) {
			struct flow_key tk = { .saddr = snat_ip, .daddr = chosen.addr, .sport = chosen.snat_port,
					       .dport = chosen.port, .proto = k.proto };
			trace_new(skb, &tk, TRACE_TO_NETWORK, 0, 0);
		}
	}
	if (be->snat_port) {
		struct nat_val ct = *be;
		return forward_remote(skb, &k, &ct, finrst);
	}
	if (rewrite(skb, k.proto, IP_DST_OFF, k.daddr, be->addr, L4_OFF + 2, k.dport, be->port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

#endif
