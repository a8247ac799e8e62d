/* SPDX-License-Identifier: GPL-2.0 */
/* Trace events for flow visibility (NODE_F_TRACE): one per new connection a tc program sees at
 * each observation point (pod veths; node devices for external frontends), and one per socket-LB
 * translation, not one per packet (Hubble's monitor aggregation does the same for established flows).
 * New means a TCP SYN without ACK, or a UDP flow not traced in the last TRACE_UDP_AGAIN_S. */
#ifndef SLUICE_LIB_TRACE_H
#define SLUICE_LIB_TRACE_H

#include "maps.h"
#include "packet.h"

#define TRACE_UDP_AGAIN_S 60

static __always_inline __u32 node_flags(void)
{
	__u32 zero = 0;
	struct node_cfg *node = bpf_map_lookup_elem(&sluice_node, &zero);
	return node ? node->flags : 0;
}

/* Within this CPU's budget `b` of `per_s` events a second; over it (or `b` missing) the event is
 * counted as suppressed and not sent. */
static __always_inline int ev_take(struct ev_budget *b, __u64 per_s)
{
	__u64 now = bpf_ktime_get_ns();

	if (!b)
		return 0;
	if (now - b->window_ns >= 1000000000ULL) {
		b->window_ns = now;
		b->sent = 0;
	}
	if (b->sent >= per_s) {
		b->suppressed++;
		return 0;
	}
	return 1;
}

/* Whether a UDP flow is new to the tracer at this observation point (and remember it). The key
 * is the flow as it continues after translation (`xaddr` set: to the backend), so a reply, which
 * comes from the backend, finds its request under the reversed key and the other point. */
static __always_inline int trace_udp_new(struct flow_key *k, __u8 obs, __u32 xaddr, __u16 xport)
{
	struct flow_key tk = *k;
	struct flow_key rk;
	__u32 now = now_s();
	__u32 *seen;

	if (xaddr) {
		tk.daddr = xaddr;
		tk.dport = xport;
	}
	tk.pad[0] = obs + 1;
	tk.pad[1] = tk.pad[2] = 0;
	seen = bpf_map_lookup_elem(&sluice_trace_udp, &tk);
	if (seen && now - *seen < TRACE_UDP_AGAIN_S)
		return 0;
	if (obs <= TRACE_TO_ENDPOINT) {
		/* (The network points are met only by a flow's first packet, replies take the
		 * reverse-NAT paths before them.) */
		rk = (struct flow_key){ .saddr = tk.daddr, .daddr = tk.saddr, .sport = tk.dport, .dport = tk.sport,
					.proto = tk.proto, .pad = { (obs == TRACE_FROM_ENDPOINT ? TRACE_TO_ENDPOINT : TRACE_FROM_ENDPOINT) + 1 } };
		seen = bpf_map_lookup_elem(&sluice_trace_udp, &rk);
		if (seen && now - *seen < TRACE_UDP_AGAIN_S)
			return 0; /* the reply of a flow traced the other way */
	}
	bpf_map_update_elem(&sluice_trace_udp, &tk, &now, BPF_ANY);
	return 1;
}

/* A record of `size` bytes in the ring within this CPU's trace budget; NULL when over it or the
 * ring is full (counted as suppressed, which user space reports as lost). */
static __always_inline void *trace_reserve(__u64 size)
{
	__u32 zero = 0;
	struct ev_budget *b = bpf_map_lookup_elem(&sluice_trace_budget, &zero);
	void *e;

	if (!ev_take(b, TRACE_PER_CPU_PER_S))
		return NULL;
	e = bpf_ringbuf_reserve(&sluice_events, size, 0);
	if (!e) {
		b->suppressed++;
		return NULL;
	}
	b->sent++;
	return e;
}

/* Report the packet `k` (as the program met it) at `obs` if it opens a connection and tracing
 * is on; `xaddr`/`xport`: the backend a frontend was translated to (0: not translated). A
 * separate function, so each call site does not carry the body (unused by the objects that
 * include this without a pod program). */
static __noinline __attribute__((unused)) int trace_new(struct __sk_buff *skb, struct flow_key *k, __u32 obs, __u32 xaddr, __u32 xport)
{
	struct ev_trace *e;
	__u8 flags = 0;
	__u32 want = obs == TRACE_TO_STACK ? NODE_F_TRACE | NODE_F_TO_STACK : NODE_F_TRACE;

	if (!skb || !k)
		return 0;
	/* Every packet of a flow comes here: the cheap tests first. A TCP packet that opens no
	 * connection costs one header read, not the node entry's lookup; UDP, whose novelty is a
	 * map lookup, asks whether tracing is on before that. */
	if (k->proto == IPPROTO_TCP) {
		__u8 *f = (void *)(long)skb->data + L4_OFF + 13;
		if ((void *)(f + 1) > (void *)(long)skb->data_end)
			return 0;
		flags = *f;
		/* SYN without ACK. */
		if ((flags & 0x12) != 0x02 || (node_flags() & want) != want)
			return 0;
	} else if (k->proto == IPPROTO_UDP) {
		if ((node_flags() & want) != want || !trace_udp_new(k, obs, xaddr, xport))
			return 0;
	} else {
		return 0;
	}
	e = trace_reserve(sizeof(*e));
	if (!e)
		return 0;
	e->kind = EV_TRACE;
	e->obs = obs;
	e->tcp_flags = flags;
	e->proto = k->proto;
	e->ifindex = skb->ifindex;
	e->saddr = k->saddr;
	e->daddr = k->daddr;
	e->sport = k->sport;
	e->dport = k->dport;
	e->xaddr = xaddr;
	e->xport = xport;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* A socket-LB translation of a host process's socket (`cookie`): `front` asked for, `be` given.
 * The caller tells whether it is new (a UDP socket's later sendmsg calls to the same backend are
 * not). Context-free, so the cgroup programs can call it. */
static __noinline __attribute__((unused)) int trace_sock(__u64 cookie, __u32 proto, struct nat_val *front,
							  struct backend_val *be)
{
	struct ev_sock *e;

	if (!front || !be || !(node_flags() & NODE_F_TRACE))
		return 0;
	e = trace_reserve(sizeof(*e));
	if (!e)
		return 0;
	e->kind = EV_TRACE_SOCK;
	e->xlate = SOCK_XLATE_POST_FWD;
	e->proto = proto;
	e->pad = 0;
	e->front = front->addr;
	e->backend = be->addr;
	e->front_port = front->port;
	e->backend_port = be->port;
	e->cookie = cookie;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

#endif
