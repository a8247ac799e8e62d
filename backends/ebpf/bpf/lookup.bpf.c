/* SPDX-License-Identifier: GPL-2.0 */
/* sluice's socket lookup in the node's network namespace (BPF_PROG_TYPE_SK_LOOKUP, 5.9), one
 * object of four (pod.bpf.c, net.bpf.c, sock.bpf.c). Its own object: a kernel without the hook
 * keeps the tc datapath, and L7 proxy rules then drop (the backend reports why). */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "lib/layout.h"
#include "lib/maps.h"

/* Every program file declares every map (lib/maps.h); maps are pinned by name, so the objects
 * loaded from the files share one set of maps in the node's pin directory. */
char LICENSE[] SEC("license") = "GPL";

#include "progs/lookup.h"
