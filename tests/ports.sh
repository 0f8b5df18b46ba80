# Free loopback TCP ports for the servers the test scripts start (sourced by
# tests/pulsar/standalone.sh and tests/postgres/server.sh; tests/ports.py is the Python twin).
# Bash, with no tools beyond /proc: the scripts run on a bare Debian machine.

# The local ports of every TCP socket on this machine, one a line (listening or not).
ports_in_use() {
    local file _ local_address _rest
    for file in /proc/net/tcp /proc/net/tcp6; do
        [[ -r "$file" ]] || continue
        while read -r _ local_address _rest; do
            [[ "$local_address" == *:* ]] && echo $((16#${local_address##*:}))
        done < <(tail -n +2 "$file")
    done
}

# COUNT distinct ports nobody uses now. Picked, not reserved: a caller retries when a bind fails.
# Below the kernel's ephemeral range (32768+), so outgoing connections do not take them meanwhile.
pick_free_ports() {
    local count="$1" used picked=() port
    used=" $(ports_in_use | sort -un | tr '\n' ' ') "
    while ((${#picked[@]} < count)); do
        port=$((20000 + RANDOM % 12000))
        [[ "$used" == *" $port "* || " ${picked[*]} " == *" $port "* ]] && continue
        picked+=("$port")
    done
    echo "${picked[*]}"
}
