/* SPDX-License-Identifier: GPL-2.0 */
/* Map layouts shared by the BPF programs and sluice-ebpf's Rust types (src/maps.rs mirrors
 * every struct here, with compile-time size and offset assertions). Addresses and ports are in
 * network byte order, as they sit in packets. */
#ifndef SLUICE_LIB_LAYOUT_H
#define SLUICE_LIB_LAYOUT_H

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
	__u32 flags;        /* SVC_F_* */
};

/* Who serves a frontend: each bit is set only when the plan gives that feature to eBPF, so the
 * programs never act on a frontend another dataplane owns. */
#define SVC_F_TC 1          /* per-packet at the pod veths (from pods) */
#define SVC_F_EXTERNAL 2    /* per-packet at the node's devices (from outside the node) */
#define SVC_F_SOCK_TCP 4    /* socket LB for host processes, TCP */
#define SVC_F_SOCK_UDP 8    /* socket LB for host processes, UDP */
#define SVC_F_SRC_RANGES 16 /* only sources in sluice_src_ranges may connect */
#define SVC_F_MAGLEV 32     /* new flows pick through the Maglev table, not at random */

struct backend_key {
	__u32 service_id;
	__u32 slot;         /* 1..=backend_count */
};

struct backend_val {
	__u32 addr;
	__u16 port;
	__u16 flags;        /* BE_F_* */
};

#define BE_F_LOCAL 1        /* the backend runs on this node: no SNAT needed from outside */

/* A 5-tuple as seen in a packet. */
struct flow_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* Conntrack: the forward flow (client -> VIP) maps to the backend chosen for it (and the SNAT
 * port when the node forwards it to another node); the reply flow (backend -> client) maps back
 * to the VIP for reverse NAT. */
struct nat_val {
	__u32 addr;
	__u16 port;
	__u16 snat_port;    /* forward entries: source port after SNAT to the node IP, 0 = no SNAT */
	__u32 flags;        /* NAT_F_* */
};

/* A reverse entry of a flow that came from outside the node to a local backend: the reply is
 * rewritten as it leaves the pod and sent straight out (its new source is a node address, which
 * the kernel's routing would refuse as martian). */
#define NAT_F_EXTERNAL 1

/* Hairpin: a pod reaching itself through a Service. Its packets are DNATed to itself and SNATed
 * to HAIRPIN_ADDR (so its reply leaves the pod again instead of staying local), then sent back
 * into the pod directly; the reply is translated back the same way. Forward (ct) and reverse
 * (rnat) entries of such flows carry this flag. */
#define NAT_F_HAIRPIN 2
#define HAIRPIN_ADDR_HOST_ORDER 0xa9fe2a01 /* 169.254.42.1, link-local: never a real peer */

/* SNAT reverse: the reply tuple (backend -> node IP:snat port) to the original client and frontend. */
struct snat_val {
	__u32 client;
	__u32 front;
	__u16 client_port;
	__u16 front_port;
	__u32 last_s;       /* last packet seen, seconds of bpf_ktime_get_ns */
	__u32 flags;        /* SNAT_F_* */
};

/* A FIN or RST was seen: the port may serve a new flow shortly after (it is not recycled while
 * the flow is live; an idle entry is recycled after SNAT_IDLE_S). */
#define SNAT_F_CLOSING 1

/* loadBalancerSourceRanges: LPM key = service id (always fully matched) + source prefix. */
struct src_range_key {
	__u32 prefixlen;    /* 32 + prefix length */
	__u32 service_id;
	__u32 addr;
};

/* Node facts the programs need; one entry, index 0. */
struct node_cfg {
	__u32 node_ip;      /* SNAT address for flows forwarded to other nodes */
	__u32 maglev_m;     /* Maglev table size (entries per frontend) */
	__u32 flags;        /* NODE_F_* */
	__u32 pad;
};

/* The device frontends (NodePort, external and LoadBalancer IPs, HostPorts) belong to another
 * dataplane now: the device program only carries the flows it translated before, and a reply
 * matching a closing SNAT entry is another dataplane's flow on a recycled port, not ours. */
#define NODE_F_DEVICES_DRAIN 1
/* The agent records flows from this datapath: the pod-veth programs send a trace event for each
 * new connection they see (lib/trace.h). Off, they send none (no cost beyond the flag test). */
#define NODE_F_TRACE 2
/* With NODE_F_TRACE: also a policy-verdict event for each new flow an allow rule admitted
 * (`flows.allowed_verdicts`). */
#define NODE_F_ALLOWS 4
/* With NODE_F_TRACE: also a TRACE_TO_STACK trace where a pod's new connection enters the stack. */
#define NODE_F_TO_STACK 8

/* Maglev: (service id, bucket) -> backend slot. */
struct maglev_key {
	__u32 service_id;
	__u32 index;
};

/* Socket LB reverse translation: (socket cookie, backend) -> frontend, for getpeername/recvmsg. */
struct sock_key {
	__u64 cookie;
	__u32 addr;
	__u16 port;
	__u16 pad;
};

/* Network policy (lib/policy.h). Per endpoint (its host veth) and direction: the lowered rule
 * list, denies first, the first match decides; an endpoint with no entry is not policed. */
#define POL_INGRESS 0
#define POL_EGRESS 1
#define POL_MAX_RULES 32

struct pol_ep_key {
	__u32 ifindex;
	__u32 dir;          /* POL_INGRESS, POL_EGRESS */
};

#define POL_PEER_ANY 0
#define POL_PEER_NET 1      /* arg = network, arg2 = mask (network byte order) */
#define POL_PEER_SET 2      /* arg = set id in sluice_pol_set */
#define POL_ALLOW 1
#define POL_DENY 2
#define POL_PROXY 3         /* allowed to the node's L7 proxy (lib/l7.h); a drop where it cannot redirect */

struct pol_rule {
	__u8 action;        /* POL_ALLOW, POL_DENY, POL_PROXY */
	__u8 proto;         /* 0 = any */
	__u8 peer;          /* POL_PEER_* */
	__u8 pad;
	__u16 lo;           /* host byte order; hi == 0: every port */
	__u16 hi;
	__u32 arg;
	__u32 arg2;
};

struct pol_ep_val {
	__u32 enforced;     /* 0: not isolated in this direction (flows are still recorded) */
	__u32 count;
	struct pol_rule rules[POL_MAX_RULES];
};

/* Events to user space through the sluice_events ring buffer (src/events.rs parses them; the
 * layout is asserted there). A policy drop names the endpoint (its host veth), the direction and
 * the rule that decided: its index in the endpoint's list, or EV_RULE_DEFAULT when none matched
 * (default deny); user space maps both to policies with the lowering the list was made from. */
#define EV_POLICY_DROP 1
#define EV_POLICY_AUDIT 2   /* an audit-mode policy would have dropped it; it passed */
#define EV_RULE_DEFAULT 0xff
#define EV_POLICY_ALLOW 4   /* an allow rule admitted a new flow (rule: its index); NODE_F_ALLOWS */
/* A Service frontend dropped the packet (NODE_F_TRACE): `rule` carries Hubble's drop reason
 * (DROP_NO_SERVICE_BACKEND, DROP_LB_SRC_RANGE), `dir` where (LB_AT_POD: a pod's veth, the pod
 * sending; LB_AT_DEVICE: a node device, from outside). */
#define EV_LB_DROP 6
#define DROP_NO_SERVICE_BACKEND 158
#define DROP_LB_SRC_RANGE 177
#define LB_AT_POD 0
#define LB_AT_DEVICE 1

struct ev_drop {
	__u8 kind;          /* EV_POLICY_DROP, EV_POLICY_AUDIT */
	__u8 dir;           /* POL_INGRESS, POL_EGRESS */
	__u8 rule;          /* deny rule index, or EV_RULE_DEFAULT */
	__u8 proto;
	__u32 ifindex;
	__u32 saddr;        /* network byte order, as the endpoint sees the flow */
	__u32 daddr;
	__u16 sport;        /* network byte order */
	__u16 dport;
	__u8 tcp_flags;     /* 0x02 for a connection-opening SYN, 0 otherwise */
	__u8 pad[3];
};

/* A new connection a tc program saw (NODE_F_TRACE): where (TRACE_FROM_ENDPOINT: leaving a pod,
 * before Service translation; TRACE_TO_ENDPOINT: entering one; TRACE_FROM_NETWORK: arriving on a
 * node device for an external frontend; TRACE_TO_NETWORK: that connection leaving again, SNATed,
 * for a backend on another node), the packet's addresses as the program met them (to-network: as
 * it leaves), and the backend a Service frontend was translated to (xaddr 0: none). The kind's
 * byte is EV_TRACE; the layout is asserted in src/events.rs. */
#define EV_TRACE 3
#define TRACE_FROM_ENDPOINT 0
#define TRACE_TO_ENDPOINT 1
#define TRACE_FROM_NETWORK 2
#define TRACE_TO_NETWORK 3
#define TRACE_TO_STACK 4    /* NODE_F_TO_STACK: a pod's connection entering the stack, translated */

struct ev_trace {
	__u8 kind;          /* EV_TRACE */
	__u8 obs;           /* TRACE_* */
	__u8 tcp_flags;     /* the packet's TCP flags byte (0 for UDP) */
	__u8 proto;
	__u32 ifindex;      /* the pod's host veth, or the node device (network points) */
	__u32 saddr;        /* network byte order */
	__u32 daddr;
	__u16 sport;        /* network byte order */
	__u16 dport;
	__u32 xaddr;        /* translated destination (network byte order), 0 when none */
	__u16 xport;
	__u16 pad;
};

/* A socket-LB translation (Hubble's trace-sock, NODE_F_TRACE): a host process's connect() or
 * first sendmsg() to a frontend, after translation (SOCK_XLATE_POST_FWD), with the socket's
 * cookie. Layout asserted in src/events.rs. */
#define EV_TRACE_SOCK 5
#define SOCK_XLATE_POST_FWD 2

struct ev_sock {
	__u8 kind;          /* EV_TRACE_SOCK */
	__u8 xlate;         /* SOCK_XLATE_POST_FWD */
	__u8 proto;
	__u8 pad;
	__u32 front;        /* the frontend the process asked for (network byte order) */
	__u32 backend;      /* the backend it was given */
	__u16 front_port;   /* network byte order */
	__u16 backend_port;
	__u64 cookie;       /* bpf_get_socket_cookie */
};

/* Per-CPU budget of trace events a second: a connection flood fills the ring no faster than the
 * reader empties it; what is over it is counted (`suppressed`) and reported as lost. Separate
 * from the drops' budget, so traces never crowd out a policy drop. */
#define TRACE_PER_CPU_PER_S 100000

/* Per-CPU budget of events a second (a flood of drops must not flood the ring or the reader):
 * what is over the budget, or finds the ring full, is counted in `suppressed`, which user space
 * reports as lost events. */
#define EV_PER_CPU_PER_S 2000

struct ev_budget {
	__u64 window_ns;
	__u64 sent;
	__u64 suppressed;
};

/* Peer sets: LPM key = set id (always fully matched) + address prefix; value 1 match, 0 nomatch. */
struct pol_set_key {
	__u32 prefixlen;    /* 32 + prefix length */
	__u32 set_id;
	__u32 addr;
};

/* Admitted flows, per endpoint and direction: later packets and replies pass without a lookup. */
struct pol_ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
	__u32 ifindex;
};

/* The L7 proxy (lib/l7.h): its listener is 127.0.0.1:PROXY_PORT; packets for it carry
 * PROXY_MARK, which the node's policy routing (fwmark rule, table 2004) delivers locally.
 * Upstream connections of the proxy use source ports PROXY_UPSTREAM_LO and above. */
#define PROXY_MARK 0x40000
#define PROXY_UPSTREAM_LO 61000

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
