/* SPDX-License-Identifier: GPL-2.0 */
/* Every map of the datapath: one definition, pinned by name under the node's pin directory. */
#ifndef SLUICE_LIB_MAPS_H
#define SLUICE_LIB_MAPS_H

#include "layout.h"

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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct pol_ep_key);
	__type(value, struct pol_ep_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_pol_ep SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 20);
	__type(key, struct pol_set_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_pol_set SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct pol_ct_key);
	__type(value, __u32);       /* last seen, seconds (now_s) */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_pol_ct SEC(".maps");

/* Audit lists: same key and layout as sluice_pol_ep, for endpoint directions an audit-mode
 * policy concerns; evaluated only for new flows the enforced list passed. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct pol_ep_key);
	__type(value, struct pol_ep_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_pol_audit SEC(".maps");

/* Local endpoints: address -> host veth ifindex (a packet's destination names the endpoint whose
 * ingress L7 rules apply). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_pol_addr SEC(".maps");

/* The L7 proxy's port (host byte order), index 0; 0 while no proxy runs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_l7_port SEC(".maps");

/* TCP connections handed to the L7 proxy (the tuple as it leaves the client, after Service
 * translation): their later packets go to the proxy's socket without a policy lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct flow_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_l7 SEC(".maps");

/* The L7 proxy's listener, index 0, written by the agent (a socket leaves the map when it
 * closes): where sluice_l7_lookup steers the connections the tc programs handed to the proxy. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_l7_sock SEC(".maps");

/* Events for user space (flows): policy drops and audited would-be drops. Not resized by the
 * config. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ev_budget);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ev_budget SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ev_budget);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_trace_budget SEC(".maps");

/* UDP has no SYN: a flow is traced when its key (with the observation point in pad[0]) is not
 * here or was last traced over TRACE_UDP_AGAIN_S ago (conntrack's view of a new UDP flow). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_trace_udp SEC(".maps");

/* The network namespace cookie of the node's own processes (the agent's): socket LB translates
 * their sockets only; a pod's socket is left to its veth's program (0: not written yet, every
 * socket, as before this map existed). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_hostns SEC(".maps");

#endif
