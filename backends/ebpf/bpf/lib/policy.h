/* SPDX-License-Identifier: GPL-2.0 */
/* Network policy at the pod veths: egress in sluice_from_pod after Service translation (the
 * destination is the backend), ingress in sluice_to_pod before reverse NAT. A flow admitted in a
 * direction is recorded in sluice_pol_ct; its later packets, and its replies in the other
 * direction, pass without a rule lookup. Traffic from this node's own address always passes. */
#ifndef SLUICE_LIB_POLICY_H
#define SLUICE_LIB_POLICY_H

#include "maps.h"
#include "trace.h"

static __always_inline int pol_rule_matches(struct pol_rule *r, __u32 peer, __u8 proto, __u16 port)
{
	if (r->proto && r->proto != proto)
		return 0;
	if (r->hi && (port < r->lo || port > r->hi))
		return 0;
	if (r->peer == POL_PEER_NET)
		return (peer & r->arg2) == r->arg;
	if (r->peer == POL_PEER_SET) {
		struct pol_set_key sk = { .prefixlen = 64, .set_id = r->arg, .addr = peer };
		__u8 *m = bpf_map_lookup_elem(&sluice_pol_set, &sk);
		return m && *m;
	}
	return 1;
}

/* An admitted flow idle longer than this is decided afresh (conntrack's UDP stream timeout). */
#define POL_CT_IDLE_S 180
/* Refresh an entry's last-seen time at most this often (a map write per packet is too many). */
#define POL_CT_REFRESH_S 30

/* Whether `key` is an admitted flow seen recently; refreshes its time now and then. */
static __always_inline int pol_ct_live(struct pol_ct_key *key, __u32 now)
{
	__u32 *seen = bpf_map_lookup_elem(&sluice_pol_ct, key);
	if (!seen || now - *seen > POL_CT_IDLE_S)
		return 0;
	if (now - *seen > POL_CT_REFRESH_S)
		bpf_map_update_elem(&sluice_pol_ct, key, &now, BPF_ANY);
	return 1;
}

/* Tell user space about a policy drop (or an audited would-be drop), within this CPU's budget
 * of events a second. */
static __always_inline void pol_report(__u8 kind, __u32 ifindex, __u32 dir, struct flow_key *k, __u32 rule, int syn)
{
	__u32 zero = 0;
	struct ev_budget *b = bpf_map_lookup_elem(&sluice_ev_budget, &zero);
	struct ev_drop *e;

	if (!ev_take(b, EV_PER_CPU_PER_S))
		return;
	e = bpf_ringbuf_reserve(&sluice_events, sizeof(*e), 0);
	if (!e) {
		b->suppressed++;
		return;
	}
	b->sent++;
	e->kind = kind;
	e->dir = dir;
	e->rule = rule;
	e->proto = k->proto;
	e->ifindex = ifindex;
	e->saddr = k->saddr;
	e->daddr = k->daddr;
	e->sport = k->sport;
	e->dport = k->dport;
	e->tcp_flags = syn ? 0x02 : 0;
	e->pad[0] = e->pad[1] = e->pad[2] = 0;
	bpf_ringbuf_submit(e, 0);
}

/* A packet a Service frontend dropped (`reason`: DROP_*; `at`: LB_AT_*), reported while flows
 * run. Not inlined: the drop paths of the programs stay one call each. */
static __noinline __attribute__((unused)) int lb_drop(struct __sk_buff *skb, struct flow_key *k, __u32 at, __u32 reason, int syn)
{
	if (!skb || !k || !(node_flags() & NODE_F_TRACE))
		return TC_ACT_SHOT;
	pol_report(EV_LB_DROP, skb->ifindex, at, k, reason, syn);
	return TC_ACT_SHOT;
}

/* pol_pass's verdicts. */
#define PV_DROP 0
#define PV_PASS 1
#define PV_PROXY 2          /* a new TCP connection for the L7 proxy (lib/l7.h) */

/* The first rule of `ep` matching the flow: its index, or EV_RULE_DEFAULT when none does;
 * `*action` is that rule's (POL_ALLOW, POL_DENY, POL_PROXY) or, with none, the list's default. */
static __always_inline __u32 pol_first_match(struct pol_ep_val *ep, __u32 peer, __u8 proto, __u16 port, __u8 *action)
{
	__u32 n = ep->count;

	for (int i = 0; i < POL_MAX_RULES; i++) {
		if (i >= n)
			break;
		struct pol_rule *r = &ep->rules[i];
		if (pol_rule_matches(r, peer, proto, port)) {
			*action = r->action;
			return i;
		}
	}
	*action = ep->enforced ? POL_DENY : POL_ALLOW;
	return EV_RULE_DEFAULT;
}

/* After the enforced list admitted a new flow by `rule` (EV_RULE_DEFAULT: no policy isolates
 * this direction): the verdict, when asked for (NODE_F_ALLOWS), and an audit-mode policy's
 * verdict (reported, never enforced). A separate function (not inlined) so each caller of
 * pol_pass does not carry a second rule loop, and no branch of it adds to the caller's paths
 * (inlined, the verifier ran out of its budget on sluice_from_pod). */
static __noinline int pol_admitted(__u32 ifindex, __u32 dir, struct flow_key *k, int syn, __u32 rule)
{
	struct pol_ep_key ek = { .ifindex = ifindex, .dir = dir };
	struct pol_ep_val *ep;
	__u8 action = POL_ALLOW;
	__u32 audit_rule;

	if (!k)
		return 0;
	if (rule != EV_RULE_DEFAULT && (node_flags() & (NODE_F_TRACE | NODE_F_ALLOWS)) == (NODE_F_TRACE | NODE_F_ALLOWS))
		pol_report(EV_POLICY_ALLOW, ifindex, dir, k, rule, syn);
	ep = bpf_map_lookup_elem(&sluice_pol_audit, &ek);
	if (!ep)
		return 0;
	/* As every caller of pol_pass: the peer is the other end, the port the destination's. */
	audit_rule = pol_first_match(ep, dir == POL_EGRESS ? k->daddr : k->saddr, k->proto, bpf_ntohs(k->dport), &action);
	if (action == POL_DENY)
		pol_report(EV_POLICY_AUDIT, ifindex, dir, k, audit_rule, syn);
	return 0;
}

/* PV_PASS, PV_DROP, or (only when `can_proxy`: a new TCP connection where the redirect exists)
 * PV_PROXY. `k` is the flow as the endpoint sees it in this direction (for egress: after Service
 * translation); `peer` is the other end (destination on egress, source on ingress). A TCP SYN
 * is always decided afresh: a reused client port must not inherit an old connection's
 * admission, and a policy change applies to every new connection. A proxy rule where the
 * packet cannot be redirected drops it (an L7 port never opens unfiltered). */
static __always_inline int pol_pass(__u32 ifindex, __u32 dir, struct flow_key *k, __u32 peer, __u16 port_n, int syn, int can_proxy)
{
	struct pol_ep_key ek = { .ifindex = ifindex, .dir = dir };
	struct pol_ep_val *ep = bpf_map_lookup_elem(&sluice_pol_ep, &ek);
	struct pol_ct_key ck = { .saddr = k->saddr, .daddr = k->daddr, .sport = k->sport, .dport = k->dport,
				 .proto = k->proto, .dir = dir, .ifindex = ifindex };
	struct pol_ct_key rk = { .saddr = k->daddr, .daddr = k->saddr, .sport = k->dport, .dport = k->sport,
				 .proto = k->proto, .dir = dir == POL_INGRESS ? POL_EGRESS : POL_INGRESS, .ifindex = ifindex };
	__u32 now = now_s();
	__u8 action = POL_ALLOW;
	__u32 rule = EV_RULE_DEFAULT;

	if (!ep)
		return PV_PASS; /* not policed */
	if (!syn && (pol_ct_live(&ck, now) || pol_ct_live(&rk, now)))
		return PV_PASS; /* an admitted flow, or the reply of one */
	if (ep->enforced)
		rule = pol_first_match(ep, peer, k->proto, bpf_ntohs(port_n), &action);
	if (action == POL_PROXY && can_proxy)
		return PV_PROXY;
	if (action == POL_ALLOW) {
		bpf_map_update_elem(&sluice_pol_ct, &ck, &now, BPF_ANY);
		pol_admitted(ifindex, dir, k, syn, rule);
		return PV_PASS;
	}
	pol_report(EV_POLICY_DROP, ifindex, dir, k, rule, syn);
	return PV_DROP;
}

/* Any IPv4 packet the service path does not parse (SCTP, ICMP, ...): addresses, protocol, and
 * SCTP's ports; other protocols police with ports 0 (only a rule without ports matches them). */
static __always_inline int parse_other(struct __sk_buff *skb, struct flow_key *k)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;

	if ((void *)(ip + 1) > end)
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5)
		return -1;
	k->saddr = ip->saddr;
	k->daddr = ip->daddr;
	k->proto = ip->protocol;
	k->sport = k->dport = 0;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
	if (ip->protocol == IPPROTO_SCTP && !(ip->frag_off & bpf_htons(0x3fff))) {
		__u16 *ports = data + L4_OFF;
		if ((void *)(ports + 2) > end)
			return -1;
		k->sport = ports[0];
		k->dport = ports[1];
	}
	return 0;
}

/* Traffic from this node to a pod always passes (Kubernetes): a packet a local socket sent
 * (forwarded packets lose their socket when they cross a veth), or one from the node's address. */
static __always_inline int from_own_node(struct __sk_buff *skb, __u32 saddr)
{
	__u32 zero = 0;
	struct node_cfg *node;

	if (skb->sk)
		return 1;
	node = bpf_map_lookup_elem(&sluice_node, &zero);
	return node && node->node_ip == saddr;
}

#endif
