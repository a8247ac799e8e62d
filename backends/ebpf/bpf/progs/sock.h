/* SPDX-License-Identifier: GPL-2.0 */
/* cgroup sock_addr programs: socket LB for host processes. */
#ifndef SLUICE_PROGS_SOCK_H
#define SLUICE_PROGS_SOCK_H

#include "../lib/lb.h"
#include "../lib/trace.h"

/* Socket LB: translate a host process's destination before the first packet exists. */
static __always_inline int sock_forward(struct bpf_sock_addr *ctx, __u32 want)
{
	struct svc_key sk = { .vip = ctx->user_ip4, .port = (__u16)ctx->user_port, .proto = ctx->protocol };
	struct svc_val *svc;
	struct backend_val *b;
	struct sock_key rk = {};
	__u32 slot;
	struct nat_val front = {};
	struct nat_val *had;

	__u32 zero = 0;
	__u64 *hostns = bpf_map_lookup_elem(&sluice_hostns, &zero);

	if (ctx->user_family != 2 /* AF_INET */)
		return 1;
	/* Host processes only (a pod in the same cgroup is translated at its veth, where policy
	 * and the flow trace see the Service). */
	if (hostns && *hostns && bpf_get_netns_cookie(ctx) != *hostns)
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
	/* New for the tracer unless this socket already sent to this backend for this frontend
	 * (a UDP socket's every sendmsg comes here). */
	had = bpf_map_lookup_elem(&sluice_sock_rnat, &rk);
	if (!had || had->addr != front.addr || had->port != front.port)
		trace_sock(rk.cookie, ctx->protocol, &front, b);
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

#endif
