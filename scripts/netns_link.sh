#!/usr/bin/env bash
# Real kernel link shaping for splitdnn experiments: two network namespaces joined by a veth pair, with a
# `tc tbf` token bucket on each end (edge egress = uplink, server egress = downlink). Needs root and
# iproute2 (ip, tc). `netem` is not available on these machines, so no delay is added here: add RTT in
# the application (splitdnn.runtime.shaper) where an experiment needs it.
#
#   bash scripts/netns_link.sh up       # create or update (idempotent); on any failure it tears down
#   bash scripts/netns_link.sh rate     # change the rates of a link that is up
#   bash scripts/netns_link.sh status   # print the state; exit 0 when fully up, 1 otherwise
#   bash scripts/netns_link.sh down     # remove everything; always succeeds, also after a partial `up`
#
# Settings (environment):
#   MBPS=5.85                 uplink rate, edge -> server, Mbit/s (1 Mbit/s = 1e6 bit/s)
#   DOWN_MBPS=$MBPS           downlink rate, server -> edge, Mbit/s
#   SDNN_NS_EDGE=sdnn-edge    namespace of the edge (client) side
#   SDNN_NS_SRV=sdnn-srv      namespace of the server side
#   SDNN_EDGE_ADDR=10.77.0.1/24   SDNN_SRV_ADDR=10.77.0.2/24
#   SDNN_TBF_LATENCY_MS=400   the most time a packet may wait in a tbf queue (its depth); deep enough
#                             that TCP at 0.13 Mbit/s is not starved by drops, as on a real cellular link
# Run a program on one side with: ip netns exec "$SDNN_NS_SRV" python -m splitdnn serve ...
set -euo pipefail

EDGE=${SDNN_NS_EDGE:-sdnn-edge}
SRV=${SDNN_NS_SRV:-sdnn-srv}
EDGE_ADDR=${SDNN_EDGE_ADDR:-10.77.0.1/24}
SRV_ADDR=${SDNN_SRV_ADDR:-10.77.0.2/24}
MBPS=${MBPS:-5.85}
DOWN_MBPS=${DOWN_MBPS:-$MBPS}
LATENCY_MS=${SDNN_TBF_LATENCY_MS:-400}
# Interface names live inside each namespace, so several links (other namespace names) never clash.
VETH_EDGE=sdnn-edge0
VETH_SRV=sdnn-srv0

die() {
    echo "netns_link.sh: $*" >&2
    exit 2
}

check_rate() {  # name value: a positive decimal number of Mbit/s
    [[ $2 =~ ^[0-9]+([.][0-9]+)?$ ]] && awk -v r="$2" 'BEGIN { exit !(r > 0) }' ||
        die "$1 must be a rate > 0 in Mbit/s such as 5.85, found '$2'; set it in the environment"
}

check_ns_name() {  # name value
    [[ $2 =~ ^[A-Za-z0-9_.-]{1,64}$ ]] ||
        die "$1 must be a namespace name of letters, digits, '_', '.', '-', found '$2'"
}

burst_bytes() {  # rate_mbps -> bucket depth: 5 ms of traffic, at least 2 full frames (tbf needs >= MTU)
    awk -v r="$1" 'BEGIN { b = r * 1e6 / 8 * 0.005; if (b < 3028) b = 3028; printf "%d", b }'
}

ns_exists() {
    [[ -e "/var/run/netns/$1" ]] || ip netns list | awk -v n="$1" '$1 == n { f = 1 } END { exit !f }'
}

shape() {  # ns dev mbps
    tc -n "$1" qdisc replace dev "$2" root tbf rate "${3}mbit" burst "$(burst_bytes "$3")" \
        latency "${LATENCY_MS}ms"
}

do_down() {
    local ns
    for ns in "$EDGE" "$SRV"; do
        if ns_exists "$ns"; then
            # Deleting a namespace destroys the veth end in it, and with it the peer.
            ip netns delete "$ns" 2>/dev/null || echo "netns_link.sh: could not delete namespace $ns" >&2
        fi
    done
    return 0
}

do_up() {
    check_rate MBPS "$MBPS"
    check_rate DOWN_MBPS "$DOWN_MBPS"
    [[ $LATENCY_MS =~ ^[0-9]+$ && $LATENCY_MS -gt 0 ]] ||
        die "SDNN_TBF_LATENCY_MS must be a whole number of ms > 0, found '$LATENCY_MS'"
    [[ $EUID -eq 0 ]] || die "needs root (network namespaces and tc); run it with sudo or as root"
    command -v ip >/dev/null && command -v tc >/dev/null || die "needs iproute2 (ip, tc); install iproute2"
    # From here on, any failure (or Ctrl-C) leaves nothing behind: the EXIT trap tears down unless the
    # last line of `up` was reached.
    up_done=0
    trap 'rc=$?; if [[ $up_done != 1 ]]; then
              echo "netns_link.sh: up failed (exit $rc); tearing down" >&2; do_down; fi' EXIT
    trap 'exit 130' INT TERM
    local ns
    for ns in "$EDGE" "$SRV"; do
        ns_exists "$ns" || ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    if ! ip -n "$EDGE" link show "$VETH_EDGE" >/dev/null 2>&1; then
        # A stale end without its peer cannot exist (deleting one end deletes both), so create the pair.
        ip -n "$SRV" link delete "$VETH_SRV" 2>/dev/null || true
        ip link add "$VETH_EDGE" netns "$EDGE" type veth peer name "$VETH_SRV" netns "$SRV"
    fi
    ip -n "$EDGE" addr replace "$EDGE_ADDR" dev "$VETH_EDGE"
    ip -n "$SRV" addr replace "$SRV_ADDR" dev "$VETH_SRV"
    ip -n "$EDGE" link set "$VETH_EDGE" up
    ip -n "$SRV" link set "$VETH_SRV" up
    shape "$EDGE" "$VETH_EDGE" "$MBPS"
    shape "$SRV" "$VETH_SRV" "$DOWN_MBPS"
    up_done=1
    echo "netns_link.sh: up: $EDGE ${EDGE_ADDR%/*} --${MBPS} Mbit/s--> $SRV ${SRV_ADDR%/*}" \
        "(downlink ${DOWN_MBPS} Mbit/s)"
}

do_rate() {
    check_rate MBPS "$MBPS"
    check_rate DOWN_MBPS "$DOWN_MBPS"
    is_up || die "the link $EDGE <-> $SRV is not up; run 'netns_link.sh up' first"
    shape "$EDGE" "$VETH_EDGE" "$MBPS"
    shape "$SRV" "$VETH_SRV" "$DOWN_MBPS"
    echo "netns_link.sh: rate: uplink ${MBPS} Mbit/s, downlink ${DOWN_MBPS} Mbit/s"
}

is_up() {
    ns_exists "$EDGE" && ns_exists "$SRV" &&
        ip -n "$EDGE" link show "$VETH_EDGE" >/dev/null 2>&1 &&
        ip -n "$SRV" link show "$VETH_SRV" >/dev/null 2>&1 &&
        tc -n "$EDGE" qdisc show dev "$VETH_EDGE" root | grep tbf >/dev/null &&
        tc -n "$SRV" qdisc show dev "$VETH_SRV" root | grep tbf >/dev/null
}

do_status() {
    local ns dev
    for ns in "$EDGE" "$SRV"; do
        if ! ns_exists "$ns"; then
            echo "$ns: absent"
            continue
        fi
        dev=$VETH_EDGE
        [[ $ns == "$SRV" ]] && dev=$VETH_SRV
        echo "$ns: $(ip -n "$ns" -brief addr show dev "$dev" 2>/dev/null || echo "no $dev")"
        echo "$ns: $(tc -n "$ns" qdisc show dev "$dev" root 2>/dev/null || echo "no qdisc")"
    done
    if is_up; then
        echo "up"
    else
        echo "down"
        return 1
    fi
}

check_ns_name SDNN_NS_EDGE "$EDGE"
check_ns_name SDNN_NS_SRV "$SRV"
[[ $EDGE != "$SRV" ]] || die "SDNN_NS_EDGE and SDNN_NS_SRV must differ, both are '$EDGE'"

case "${1:-}" in
    up) do_up ;;
    down) do_down ;;
    rate) do_rate ;;
    status) do_status ;;
    *) die "usage: netns_link.sh up|down|rate|status (settings in the environment; see the header), found '${1:-}'" ;;
esac
