/* sluice per-packet service load balancing on a pod's host-side veth.
 *
 * sluice_from_pod (tc ingress, packets leaving the pod): a new flow to a service frontend gets a
 * backend (ClientIP affinity first, else random), recorded in the forward and reverse
 * conntrack maps; every packet of the flow is DNATed to that backend.
 * sluice_to_pod (tc egress, packets entering the pod): replies of such flows get their source
 * rewritten back to the frontend (reverse NAT).
 * Everything else passes untouched with TC_ACT_UNSPEC (TCX_NEXT under TCX): other programs
 * attached after ours still see it. Rewritten packets end the chain with TC_ACT_OK. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "lb.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 655360);
	__type(key, struct backend_key);
	__type(value, struct backend_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct flow_key);
	__type(value, struct nat_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct flow_key);
	__type(value, struct nat_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_rnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct affinity_key);
	__type(value, struct affinity_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_affinity SEC(".maps");

/* "Not ours": continue with the next TCX program, or the default action under classic tc. */
#define PASS TC_ACT_UNSPEC

#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
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

static __always_inline __u32 pick_slot(struct flow_key *k, struct svc_val *svc)
{
	struct affinity_key ak = { .client = k->saddr, .service_id = svc->service_id };
	__u64 now = bpf_ktime_get_ns();
	__u32 slot;

	if (svc->affinity_s) {
		struct affinity_val *a = bpf_map_lookup_elem(&sluice_affinity, &ak);
		if (a && a->slot >= 1 && a->slot <= svc->backend_count &&
		    now - a->last_ns < (__u64)svc->affinity_s * 1000000000ULL) {
			a->last_ns = now;
			return a->slot;
		}
	}
	slot = (bpf_get_prandom_u32() % svc->backend_count) + 1;
	if (svc->affinity_s) {
		struct affinity_val v = { .last_ns = now, .slot = slot };
		bpf_map_update_elem(&sluice_affinity, &ak, &v, BPF_ANY);
	}
	return slot;
}

SEC("classifier")
int sluice_from_pod(struct __sk_buff *skb)
{
	struct flow_key k;
	struct nat_val *be;
	struct nat_val chosen;

	if (parse(skb, &k))
		return PASS;
	be = bpf_map_lookup_elem(&sluice_ct, &k);
	if (k.proto == IPPROTO_TCP) {
		struct tcphdr *th = (void *)(long)skb->data + L4_OFF;
		if ((void *)(th + 1) > (void *)(long)skb->data_end)
			return PASS;
		if (th->syn && !th->ack) {
			/* A SYN opens a new connection even when an old entry for the same ports is
			 * still in the LRU: pick afresh (the old backend may be gone). */
			be = NULL;
		} else if (!be) {
			/* Mid-stream without an entry: a connection another dataplane (iptables)
			 * NATed. Kernel conntrack keeps serving it, so established connections
			 * survive moving ClusterIP between backends. */
			return PASS;
		}
	}
	if (!be) {
		struct svc_key sk = { .vip = k.daddr, .port = k.dport, .proto = k.proto };
		struct svc_val *svc = bpf_map_lookup_elem(&sluice_svc, &sk);
		struct backend_key bk;
		struct backend_val *b;

		if (!svc) {
			/* A new TCP connection not to a frontend: any reverse-NAT entry left for its
			 * reply tuple by an earlier service flow on the same ports is stale, and would
			 * rewrite this connection's replies. */
			if (k.proto == IPPROTO_TCP) {
				struct flow_key rk = { .saddr = k.daddr, .daddr = k.saddr, .sport = k.dport, .dport = k.sport, .proto = k.proto };
				bpf_map_delete_elem(&sluice_rnat, &rk);
			}
			return PASS;
		}
		if (svc->backend_count == 0)
			return TC_ACT_SHOT; /* a frontend without endpoints refuses, as kube-proxy's REJECT */
		bk.service_id = svc->service_id;
		bk.slot = pick_slot(&k, svc);
		b = bpf_map_lookup_elem(&sluice_backends, &bk);
		if (!b)
			return TC_ACT_SHOT;
		if (b->addr == k.saddr) {
			/* Hairpin: a pod reaching itself would need SNAT, which this program does not
			 * do. Take the next backend; when the pod is the only one, leave the flow to
			 * iptables, which masquerades hairpin traffic. */
			if (svc->backend_count < 2)
				return PASS;
			bk.slot = bk.slot % svc->backend_count + 1;
			b = bpf_map_lookup_elem(&sluice_backends, &bk);
			if (!b || b->addr == k.saddr)
				return PASS;
		}
		chosen.addr = b->addr;
		chosen.port = b->port;
		chosen.pad = 0;
		struct flow_key rk = { .saddr = b->addr, .daddr = k.saddr, .sport = b->port, .dport = k.sport, .proto = k.proto };
		struct nat_val front = { .addr = k.daddr, .port = k.dport };
		bpf_map_update_elem(&sluice_rnat, &rk, &front, BPF_ANY);
		bpf_map_update_elem(&sluice_ct, &k, &chosen, BPF_ANY);
		be = &chosen;
	}
	if (rewrite(skb, k.proto, IP_DST_OFF, k.daddr, be->addr, L4_OFF + 2, k.dport, be->port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

SEC("classifier")
int sluice_to_pod(struct __sk_buff *skb)
{
	struct flow_key k;
	struct nat_val *front;

	if (parse(skb, &k))
		return PASS;
	front = bpf_map_lookup_elem(&sluice_rnat, &k);
	if (!front)
		return PASS;
	if (rewrite(skb, k.proto, IP_SRC_OFF, k.saddr, front->addr, L4_OFF, k.sport, front->port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}
