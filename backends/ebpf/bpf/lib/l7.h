/* SPDX-License-Identifier: GPL-2.0 */
/* L7 (HTTP) policy: new TCP connections whose first matching rule is POL_PROXY (the client pod's
 * egress rules, or the ingress rules of the local endpoint they go to) are handed to the node's
 * L7 proxy, a listener on 127.0.0.1:port (sluice_l7_port). At tc ingress the connection is
 * recorded (sluice_l7) and every packet gets PROXY_MARK, which the node's policy routing
 * (fwmark rule -> table 2004, a local default route) delivers locally; the SYN's listener lookup
 * runs sluice_l7_lookup, which assigns the proxy's listener (bpf_sk_assign in the sk_lookup
 * hook), and later packets find the accepted socket by the connection's own addresses. So the
 * proxy knows the original destination from its socket, not from anything the client sends.
 *
 * The proxy opens its upstream connection from the client's address (ports PROXY_UPSTREAM_LO
 * and above); the server's replies, addressed to the client pod, are marked the same way when a
 * local socket owns their tuple, and reach the proxy instead.
 *
 * Without a proxy (sluice_l7_port 0) nothing is redirected and proxy rules drop: an L7 port
 * never opens unfiltered. */
#ifndef SLUICE_LIB_L7_H
#define SLUICE_LIB_L7_H

#include "policy.h"

static __always_inline __u32 l7_port(void)
{
	__u32 zero = 0;
	__u32 *p = bpf_map_lookup_elem(&sluice_l7_port, &zero);

	return p ? *p : 0;
}

/* Whether the ingress rules of the local endpoint `k->daddr` send this new TCP connection to
 * the proxy. A separate function: the rule walk is not inlined into every caller. */
static __noinline int l7_ingress_wants(struct flow_key *k)
{
	struct pol_ep_key ek = { .dir = POL_INGRESS };
	struct pol_ep_val *ep;
	__u32 *ifindex;
	__u8 action = POL_ALLOW;

	if (!k)
		return 0;
	ifindex = bpf_map_lookup_elem(&sluice_pol_addr, &k->daddr);
	if (!ifindex)
		return 0;
	ek.ifindex = *ifindex;
	ep = bpf_map_lookup_elem(&sluice_pol_ep, &ek);
	if (!ep || !ep->enforced)
		return 0;
	pol_first_match(ep, k->saddr, k->proto, bpf_ntohs(k->dport), &action);
	return action == POL_PROXY;
}

/* Record whether the connection a SYN opens goes to the proxy (an entry left by an earlier
 * connection on the same ports must not redirect this one). */
static __always_inline void l7_remember(struct flow_key *k, int proxied)
{
	__u8 one = 1;

	if (proxied)
		bpf_map_update_elem(&sluice_l7, k, &one, BPF_ANY);
	else
		bpf_map_delete_elem(&sluice_l7, k);
}

/* The verdict on a TCP or UDP packet leaving a pod (`k` after Service translation): PV_DROP,
 * PV_PASS, or PV_PROXY by the pod's egress rules or the local destination's ingress rules. */
static __always_inline int l7_from_pod(struct __sk_buff *skb, struct flow_key *k, int syn)
{
	int tcp = k->proto == IPPROTO_TCP;
	int proxy = tcp && l7_port();
	int v;

	if (proxy && !syn && bpf_map_lookup_elem(&sluice_l7, k))
		return PV_PROXY;
	v = pol_pass(skb->ifindex, POL_EGRESS, k, k->daddr, k->dport, syn, proxy && syn);
	if (v == PV_PASS && proxy && syn && l7_ingress_wants(k))
		v = PV_PROXY;
	if (proxy && syn)
		l7_remember(k, v == PV_PROXY);
	return v;
}

/* Whether a TCP packet arriving from another node goes to the proxy (a local endpoint's ingress
 * rules). */
static __always_inline int l7_from_net(struct flow_key *k, int syn)
{
	int proxied;

	if (k->proto != IPPROTO_TCP || !l7_port())
		return 0;
	if (!syn)
		return bpf_map_lookup_elem(&sluice_l7, k) != 0;
	proxied = l7_ingress_wants(k);
	l7_remember(k, proxied);
	return proxied;
}

/* Hand a packet of a proxied connection (`k` as it now is) to the proxy: every packet gets the
 * mark that routes it to local delivery; there the stack finds the connection's own socket, or
 * for a SYN sluice_l7_lookup (progs/lookup.h) gives it the proxy's listener. A SYN while no
 * listener is up is dropped here (reported as a policy drop by the caller's verdict). */
static __always_inline int l7_redirect(struct __sk_buff *skb, struct flow_key *k, int syn)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 port = l7_port();
	int listening;

	if (!port)
		return TC_ACT_SHOT;
	if (syn) {
		t.ipv4.saddr = k->saddr;
		t.ipv4.sport = k->sport;
		t.ipv4.daddr = bpf_htonl(0x7f000001);
		t.ipv4.dport = bpf_htons((__u16)port);
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return TC_ACT_SHOT;
		listening = sk->state == BPF_TCP_LISTEN;
		bpf_sk_release(sk);
		if (!listening)
			return TC_ACT_SHOT;
	}
	skb->mark |= PROXY_MARK;
	return TC_ACT_OK;
}

/* A packet for one of the proxy's upstream connections: marked for local delivery (returns 1)
 * when a local socket owns its tuple. A reply is never a bare SYN. */
static __always_inline int l7_upstream_reply(struct __sk_buff *skb, struct flow_key *k, int syn)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	int ours;

	if (syn || k->proto != IPPROTO_TCP || bpf_ntohs(k->dport) < PROXY_UPSTREAM_LO || !l7_port())
		return 0;
	t.ipv4.saddr = k->saddr;
	t.ipv4.daddr = k->daddr;
	t.ipv4.sport = k->sport;
	t.ipv4.dport = k->dport;
	sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	ours = sk->state != BPF_TCP_LISTEN;
	bpf_sk_release(sk);
	if (ours)
		skb->mark |= PROXY_MARK;
	return ours;
}

#endif
