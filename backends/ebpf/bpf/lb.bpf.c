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

#include "lb.h"

char LICENSE[] SEC("license") = "GPL";

/* max_entries below are only the object's defaults: the loader sets every map's size from the
 * config's bpf_map_sizes (sluice_core::MapSizes) before creating it. */

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

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct flow_key);
	__type(value, struct snat_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_snat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__type(key, struct src_range_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_src_ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_node SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct sock_key);
	__type(value, struct nat_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sock_rnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__type(key, struct maglev_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_maglev SEC(".maps");

/* SNAT source ports: above the kernel's default ephemeral range (32768-60999), so host sockets
 * rarely collide; the key includes the backend, so each backend has the whole range. */
#define SNAT_PORT_LO 61000
#define SNAT_PORT_N 4536
/* When a SNAT port may serve another client's flow: a TIME_WAIT (60 s) after its flow closed
 * (sooner, the backend's TIME_WAIT rejects the new SYN by PAWS: measured), or after two idle
 * minutes. The same client tuple may take its port back at once. */
#define SNAT_CLOSED_S 61
#define SNAT_IDLE_S 120

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

/* A hash of the 5-tuple, the same on every node (Maglev buckets). Never 0. */
static __always_inline __u32 flow_hash(struct flow_key *k)
{
	__u32 h = k->saddr * 0x9e3779b1u;
	h ^= k->daddr + 0x7f4a7c15u + (h << 6) + (h >> 2);
	h ^= (((__u32)k->sport << 16) | k->dport) + 0x7f4a7c15u + (h << 6) + (h >> 2);
	h ^= k->proto + 0x7f4a7c15u + (h << 6) + (h >> 2);
	return h | 1;
}

/* Backend slot for a new flow of `client`: ClientIP affinity first, then Maglev (when the
 * frontend uses it and a flow hash is given), else random. */
static __always_inline __u32 pick_slot(__u32 client, struct svc_val *svc, __u32 hash)
{
	struct affinity_key ak = { .client = client, .service_id = svc->service_id };
	__u64 now = bpf_ktime_get_ns();
	__u32 slot = 0;

	if (svc->affinity_s) {
		struct affinity_val *a = bpf_map_lookup_elem(&sluice_affinity, &ak);
		if (a && a->slot >= 1 && a->slot <= svc->backend_count &&
		    now - a->last_ns < (__u64)svc->affinity_s * 1000000000ULL) {
			a->last_ns = now;
			return a->slot;
		}
	}
	if ((svc->flags & SVC_F_MAGLEV) && hash) {
		__u32 zero = 0;
		struct node_cfg *node = bpf_map_lookup_elem(&sluice_node, &zero);
		if (node && node->maglev_m) {
			struct maglev_key mk = { .service_id = svc->service_id, .index = hash % node->maglev_m };
			__u32 *s = bpf_map_lookup_elem(&sluice_maglev, &mk);
			if (s && *s >= 1 && *s <= svc->backend_count)
				slot = *s;
		}
	}
	if (!slot)
		slot = (bpf_get_prandom_u32() % svc->backend_count) + 1;
	if (svc->affinity_s) {
		struct affinity_val v = { .last_ns = now, .slot = slot };
		bpf_map_update_elem(&sluice_affinity, &ak, &v, BPF_ANY);
	}
	return slot;
}

/* loadBalancerSourceRanges: may `src` reach this frontend? */
static __always_inline int source_allowed(struct svc_val *svc, __u32 src)
{
	struct src_range_key rk = { .prefixlen = 64, .service_id = svc->service_id, .addr = src };

	if (!(svc->flags & SVC_F_SRC_RANGES))
		return 1;
	return bpf_map_lookup_elem(&sluice_src_ranges, &rk) != NULL;
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

/* Send a rewritten packet straight out of the device the route to `daddr` uses (its new source
 * may be a node address, which the input path would drop as martian). */
static __always_inline int fib_redirect(struct __sk_buff *skb, __u32 saddr, __u32 daddr)
{
	struct bpf_fib_lookup p = {};
	long rc;

	p.family = 2; /* AF_INET */
	p.ipv4_src = saddr;
	p.ipv4_dst = daddr;
	p.ifindex = skb->ifindex;
	rc = bpf_fib_lookup(skb, &p, sizeof(p), 0);
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

/* Choose a backend for a new flow from `client` to frontend `svc` (its slot in *slot); `hash`
 * is the flow hash for Maglev, 0 for none. Returns NULL to refuse (no endpoint). */
static __always_inline struct backend_val *choose(__u32 client, struct svc_val *svc, __u32 *slot, __u32 hash)
{
	struct backend_key bk = { .service_id = svc->service_id };

	if (svc->backend_count == 0)
		return NULL;
	bk.slot = pick_slot(client, svc, hash);
	*slot = bk.slot;
	return bpf_map_lookup_elem(&sluice_backends, &bk);
}

SEC("classifier")
int sluice_from_pod(struct __sk_buff *skb)
{
	struct flow_key k;
	struct nat_val *be;
	struct nat_val chosen = {};
	__u32 slot = 0;
	int syn;

	if (parse_flow(skb, &k, &syn))
		return PASS;
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
		 * ClusterIP between backends. */
		return PASS;
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
			return PASS;
		}
		if (!source_allowed(svc, k.saddr))
			return TC_ACT_SHOT;
		b = choose(k.saddr, svc, &slot, flow_hash(&k));
		if (!b)
			return TC_ACT_SHOT; /* a frontend without endpoints refuses, as kube-proxy's REJECT */
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
		if (rewrite(skb, k.proto, IP_DST_OFF, k.daddr, addr, L4_OFF + 2, k.dport, port) ||
		    rewrite(skb, k.proto, IP_SRC_OFF, k.saddr, bpf_htonl(HAIRPIN_ADDR_HOST_ORDER), L4_OFF, k.sport, k.sport))
			return TC_ACT_SHOT;
		/* Straight back into the pod (routing would see its own address as the destination
		 * of a packet arriving from it). */
		return back_into_pod(skb);
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
	if (!front || (front->flags & (NAT_F_EXTERNAL | NAT_F_HAIRPIN)))
		return PASS;
	if (rewrite(skb, k.proto, IP_SRC_OFF, k.saddr, front->addr, L4_OFF, k.sport, front->port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

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

SEC("classifier")
int sluice_from_net(struct __sk_buff *skb)
{
	struct flow_key k;
	struct nat_val *be;
	struct snat_val *sv;
	struct nat_val chosen = {};
	__u32 slot = 0;
	int syn, finrst;

	if (parse_flow(skb, &k, &syn))
		return PASS;
	/* A reply of a flow this node SNATed: back to the client, from the frontend. */
	finrst = tcp_fin_rst(skb, k.proto);
	sv = syn ? NULL : bpf_map_lookup_elem(&sluice_snat, &k);
	/* A host connection that took the port after our flow closed: its packet, not ours. */
	if (sv && (sv->flags & SNAT_F_CLOSING) && host_owns(skb, k.proto, k.saddr, k.sport, k.daddr, k.dport))
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
			 * the frontend moved away must not catch this one's later packets. */
			if (k.proto == IPPROTO_TCP)
				bpf_map_delete_elem(&sluice_ct, &k);
			return PASS;
		}
		if (!source_allowed(svc, k.saddr))
			return TC_ACT_SHOT;
		b = choose(k.saddr, svc, &slot, flow_hash(&k));
		if (!b)
			return TC_ACT_SHOT;
		chosen.addr = b->addr;
		chosen.port = b->port;
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
		}
		bpf_map_update_elem(&sluice_ct, &k, &chosen, BPF_ANY);
		be = &chosen;
	}
	if (be->snat_port) {
		struct nat_val ct = *be;
		return forward_remote(skb, &k, &ct, finrst);
	}
	if (rewrite(skb, k.proto, IP_DST_OFF, k.daddr, be->addr, L4_OFF + 2, k.dport, be->port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* Socket LB: translate a host process's destination before the first packet exists. */
static __always_inline int sock_forward(struct bpf_sock_addr *ctx, __u32 want)
{
	struct svc_key sk = { .vip = ctx->user_ip4, .port = (__u16)ctx->user_port, .proto = ctx->protocol };
	struct svc_val *svc;
	struct backend_val *b;
	struct sock_key rk = {};
	__u32 slot;
	struct nat_val front = {};

	if (ctx->user_family != 2 /* AF_INET */)
		return 1;
	svc = bpf_map_lookup_elem(&sluice_svc, &sk);
	if (!svc || !(svc->flags & want))
		return 1;
	b = choose(0, svc, &slot, 0); /* the node itself is the client of affinity; no tuple to hash yet */
	if (!b)
		return 0; /* no endpoint: the call fails (EPERM) instead of hanging */
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.addr = b->addr;
	rk.port = b->port;
	front.addr = ctx->user_ip4;
	front.port = (__u16)ctx->user_port;
	bpf_map_update_elem(&sluice_sock_rnat, &rk, &front, BPF_ANY);
	ctx->user_ip4 = b->addr;
	ctx->user_port = (__u32)b->port;
	return 1;
}

/* Socket LB: show the frontend, not the backend, to the application. */
static __always_inline int sock_reverse(struct bpf_sock_addr *ctx)
{
	struct sock_key rk = {};
	struct nat_val *front;

	if (ctx->user_family != 2)
		return 1;
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.addr = ctx->user_ip4;
	rk.port = (__u16)ctx->user_port;
	front = bpf_map_lookup_elem(&sluice_sock_rnat, &rk);
	if (front) {
		ctx->user_ip4 = front->addr;
		ctx->user_port = (__u32)front->port;
	}
	return 1;
}

SEC("cgroup/connect4")
int sluice_sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx, ctx->protocol == IPPROTO_TCP ? SVC_F_SOCK_TCP : SVC_F_SOCK_UDP);
}

SEC("cgroup/sendmsg4")
int sluice_sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx, SVC_F_SOCK_UDP);
}

SEC("cgroup/recvmsg4")
int sluice_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx);
}

SEC("cgroup/getpeername4")
int sluice_sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx);
}
