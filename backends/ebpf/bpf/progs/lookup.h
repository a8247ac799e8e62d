/* SPDX-License-Identifier: GPL-2.0 */
/* sk_lookup: the connections the tc programs handed to the L7 proxy (lib/l7.h: sluice_l7, their
 * SYN marked for local delivery) find the proxy's listener, whatever their destination address.
 *
 * Why here and not with bpf_sk_assign at tc: a socket assigned at tc skips the stack's lookup of
 * established and TIME_WAIT sockets. The proxy closes first when a client asks it to, so a
 * TIME_WAIT `server:port <- client:port` stays on the node; a new SYN on the same ports handed
 * straight to the listener collided with it and vanished. This hook runs inside the stack's
 * listener lookup, after the TIME_WAIT has had its say: an acceptable SYN reopens the ports
 * (TCP_TW_SYN) and only then is steered to the proxy. */
#ifndef SLUICE_PROGS_LOOKUP_H
#define SLUICE_PROGS_LOOKUP_H

SEC("sk_lookup")
int sluice_l7_lookup(struct bpf_sk_lookup *ctx)
{
	struct flow_key k = {};
	struct bpf_sock *sk;
	__u32 zero = 0;
	long err;

	if (ctx->family != 2 /* AF_INET */ || ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	k.saddr = ctx->remote_ip4;
	k.daddr = ctx->local_ip4;
	k.sport = ctx->remote_port; /* network byte order */
	k.dport = bpf_htons((__u16)ctx->local_port); /* host byte order */
	k.proto = IPPROTO_TCP;
	if (!bpf_map_lookup_elem(&sluice_l7, &k))
		return SK_PASS;
	sk = bpf_map_lookup_elem(&sluice_l7_sock, &zero);
	if (!sk)
		return SK_DROP; /* the proxy is gone: never the destination's own socket */
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

#endif
