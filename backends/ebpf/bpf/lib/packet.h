/* SPDX-License-Identifier: GPL-2.0 */
/* Packet access: parsing into a flow key, rewriting addresses and ports with checksum fixups, TCP flags. */
#ifndef SLUICE_LIB_PACKET_H
#define SLUICE_LIB_PACKET_H

#include "layout.h"

/* "Not ours": continue with the next TCX program, or the default action under classic tc. */
#define PASS TC_ACT_UNSPEC

#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_TTL_OFF (ETH_HLEN + offsetof(struct iphdr, ttl))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define L4_OFF (ETH_HLEN + sizeof(struct iphdr))

/* Parse Ethernet + IPv4 (no options) + TCP/UDP ports into a flow key. */
static __always_inline int parse(struct __sk_buff *skb, struct flow_key *k)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	__u16 *ports = data + L4_OFF;

	if ((void *)(ports + 2) > end)
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5)
		return -1;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return -1;
	if (ip->frag_off & bpf_htons(0x3fff)) /* fragments carry no ports */
		return -1;
	k->saddr = ip->saddr;
	k->daddr = ip->daddr;
	k->sport = ports[0];
	k->dport = ports[1];
	k->proto = ip->protocol;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
	return 0;
}

static __always_inline __u32 l4_csum_off(__u8 proto)
{
	return L4_OFF + (proto == IPPROTO_TCP ? offsetof(struct tcphdr, check) : offsetof(struct udphdr, check));
}

/* Rewrite address (at addr_off) and port (at port_off) with checksum fixups. */
static __always_inline int rewrite(struct __sk_buff *skb, __u8 proto, __u32 addr_off, __u32 old_addr, __u32 new_addr,
				   __u32 port_off, __u16 old_port, __u16 new_port)
{
	__u32 csum = l4_csum_off(proto);
	__u64 flags = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (old_addr != new_addr) {
		if (bpf_l4_csum_replace(skb, csum, old_addr, new_addr, flags | BPF_F_PSEUDO_HDR | sizeof(new_addr)))
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)))
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0))
			return -1;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum, old_port, new_port, flags | sizeof(new_port)))
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0))
			return -1;
	}
	return 0;
}

/* TCP flags of the packet: 1 for a connection-opening SYN, 0 otherwise, -1 when unreadable. */
static __always_inline int tcp_syn(struct __sk_buff *skb)
{
	struct tcphdr *th = (void *)(long)skb->data + L4_OFF;
	if ((void *)(th + 1) > (void *)(long)skb->data_end)
		return -1;
	return th->syn && !th->ack;
}

static __always_inline __u32 now_s(void)
{
	return (__u32)(bpf_ktime_get_ns() / 1000000000ULL);
}

/* 1 when a TCP packet carries FIN or RST. */
static __always_inline int tcp_fin_rst(struct __sk_buff *skb, __u8 proto)
{
	struct tcphdr *th = (void *)(long)skb->data + L4_OFF;
	if (proto != IPPROTO_TCP || (void *)(th + 1) > (void *)(long)skb->data_end)
		return 0;
	return th->fin || th->rst;
}

/* parse() plus whether the packet opens a TCP connection (*syn). Nonzero: not ours. */
static __always_inline int parse_flow(struct __sk_buff *skb, struct flow_key *k, int *syn)
{
	*syn = 0;
	if (parse(skb, k))
		return -1;
	if (k->proto == IPPROTO_TCP) {
		*syn = tcp_syn(skb);
		if (*syn < 0)
			return -1;
	}
	return 0;
}

#endif
