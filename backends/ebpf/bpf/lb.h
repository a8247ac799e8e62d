/* Map layouts shared by the BPF programs and sluice-ebpf's Rust types (src/maps.rs mirrors
 * every struct here, with compile-time size and offset assertions). Addresses and ports are in
 * network byte order, as they sit in packets. */
#ifndef SLUICE_LB_H
#define SLUICE_LB_H

#include <linux/types.h>

/* Service frontend: VIP:port/proto -> service. */
struct svc_key {
	__u32 vip;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct svc_val {
	__u32 service_id;   /* stable id; backends are keyed by it */
	__u32 backend_count;
	__u32 affinity_s;   /* ClientIP affinity timeout in seconds, 0 = none */
	__u32 flags;
};

struct backend_key {
	__u32 service_id;
	__u32 slot;         /* 1..=backend_count */
};

struct backend_val {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

/* A 5-tuple as seen in a packet. */
struct flow_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* Conntrack: the forward flow (client -> VIP) maps to the backend chosen for it; the reply flow
 * (backend -> client) maps back to the VIP for reverse NAT. */
struct nat_val {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

struct affinity_key {
	__u32 client;
	__u32 service_id;
};

struct affinity_val {
	__u64 last_ns;
	__u32 slot;
	__u32 pad;
};

#endif
