/* SPDX-License-Identifier: GPL-2.0 */
/* Backend selection: flow hash, ClientIP affinity, Maglev or random slots, source ranges. */
#ifndef SLUICE_LIB_LB_H
#define SLUICE_LIB_LB_H

#include "maps.h"
#include "packet.h"

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

#endif
