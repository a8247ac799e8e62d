/* SPDX-License-Identifier: GPL-2.0 */
/* SNAT port bookkeeping and sending rewritten packets on (fib redirect, back into the pod). */
#ifndef SLUICE_LIB_NAT_H
#define SLUICE_LIB_NAT_H

#include "maps.h"
#include "packet.h"

/* SNAT source ports: above the kernel's default ephemeral range (32768-60999), so host sockets
 * rarely collide; the key includes the backend, so each backend has the whole range. */
#define SNAT_PORT_LO 61000
#define SNAT_PORT_N 4536
/* When a SNAT port may serve another client's flow: a TIME_WAIT (60 s) after its flow closed
 * (sooner, the backend's TIME_WAIT rejects the new SYN by PAWS: measured), or after two idle
 * minutes. The same client tuple may take its port back at once. */
#define SNAT_CLOSED_S 61
#define SNAT_IDLE_S 120

/* Keep a SNAT entry's liveness: seen now, closing when FIN/RST passed. */
static __always_inline void snat_touch(struct snat_val *sv, int finrst)
{
	sv->last_s = now_s();
	if (finrst)
		sv->flags |= SNAT_F_CLOSING;
}

/* Does a socket of this node's own own the tuple (node_ip:port <-> backend:bport)? A SNAT port must
 * not be one a host process uses towards the same backend (as MASQUERADE checks conntrack). */
static __always_inline int host_owns(struct __sk_buff *skb, __u8 proto, __u32 backend, __u16 bport, __u32 node_ip, __u16 port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	t.ipv4.saddr = backend;
	t.ipv4.daddr = node_ip;
	t.ipv4.sport = bport;
	t.ipv4.dport = port;
	if (proto == IPPROTO_TCP)
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* Send a rewritten packet straight out of the device the route to `daddr` uses (its new source
 * may be a node address, which the input path would drop as martian). */
/* Forwarding past the stack is routing: the TTL goes down by one (the IP checksum with it), and a
 * packet whose TTL runs out is dropped. A packet that translation state sent back and forth
 * between nodes dies out instead of spinning in softirq (a redirect does not meet the stack's
 * own TTL check). */
static __always_inline int ttl_hop(struct __sk_buff *skb)
{
	__u8 ttl, next;

	if (bpf_skb_load_bytes(skb, IP_TTL_OFF, &ttl, 1) || ttl <= 1)
		return -1;
	next = ttl - 1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, bpf_htons((__u16)ttl << 8), bpf_htons((__u16)next << 8), 2))
		return -1;
	return bpf_skb_store_bytes(skb, IP_TTL_OFF, &next, 1, 0) ? -1 : 0;
}

static __always_inline int fib_redirect(struct __sk_buff *skb, __u32 saddr, __u32 daddr)
{
	struct bpf_fib_lookup p = {};
	long rc;

	p.family = 2; /* AF_INET */
	p.ipv4_src = saddr;
	p.ipv4_dst = daddr;
	p.ifindex = skb->ifindex;
	rc = bpf_fib_lookup(skb, &p, sizeof(p), 0);
	if ((rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) && ttl_hop(skb))
		return TC_ACT_SHOT;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(skb, 0, p.dmac, ETH_ALEN, 0) ||
		    bpf_skb_store_bytes(skb, ETH_ALEN, p.smac, ETH_ALEN, 0))
			return TC_ACT_SHOT;
		return bpf_redirect(p.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(p.ifindex, NULL, 0, 0);
	/* Local destination or no route: the stack decides. */
	return TC_ACT_OK;
}

/* Send a packet back into the pod it came from: swap the Ethernet addresses (it was addressed to
 * the host side, the pod would drop it as not its own) and redirect to the veth's egress. */
static __always_inline int back_into_pod(struct __sk_buff *skb)
{
	__u8 macs[2 * ETH_ALEN], swapped[2 * ETH_ALEN];
	int i;

	if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)))
		return TC_ACT_SHOT;
	for (i = 0; i < ETH_ALEN; i++) {
		swapped[i] = macs[ETH_ALEN + i];
		swapped[ETH_ALEN + i] = macs[i];
	}
	if (bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), 0))
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

#endif
