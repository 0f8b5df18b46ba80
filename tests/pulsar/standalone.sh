#!/usr/bin/env bash
# A real Apache Pulsar standalone broker for cirelay's tests: Maven Central jars, no Docker.
#
#   standalone.sh start DIR        fresh broker with its state in DIR: free loopback ports, JWT auth;
#                                  returns once public/default exists; writes DIR/pulsar.env
#   standalone.sh stop DIR         stop it (SIGTERM, SIGKILL after a time-out) and delete its state
#                                  (DIR/logs is kept for post-mortems)
#   standalone.sh halt DIR         graceful stop that keeps config, ports, tokens and data
#   standalone.sh resume DIR       start a halted broker again: same ports, data and tokens
#   standalone.sh restart DIR      halt + resume
#   standalone.sh token DIR ROLE   print an HS256 JWT for ROLE signed with DIR's secret key
#   standalone.sh prepare          resolve and cache the jars and the class-data archive (the
#                                  one-time set-up `start` otherwise does first); prints the cache
#
# Environment (all optional):
#   CIRELAY_PULSAR_VERSION        Pulsar release (default 3.0.7: newest 3.0.x LTS on Central here)
#   CIRELAY_PULSAR_CACHE          jar and class-data cache (default ~/.cache/cirelay/pulsar-<version>)
#   CIRELAY_PULSAR_CDS            0 = no class-data archive (it halves the broker's start-up CPU)
#   CIRELAY_PULSAR_HEAP           max heap (default 512m)
#   CIRELAY_PULSAR_READY_TIMEOUT  seconds to wait for readiness (default 180)
#   CIRELAY_PULSAR_STOP_TIMEOUT   seconds between SIGTERM and SIGKILL (default 60)
#   CIRELAY_PULSAR_WATCH_PID      stop the broker (and delete its state) when this process exits,
#                                 so a killed test run leaves no JVM behind
#   CIRELAY_PULSAR_JAVA_OPTS      extra JVM options
#   CIRELAY_MAVEN_SETTINGS        settings.xml for the resolution (default: ./settings.xml, which
#                                 sends every repository to Maven Central; empty = Maven's own)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
PULSAR_VERSION="${CIRELAY_PULSAR_VERSION:-3.0.7}"
CACHE="${CIRELAY_PULSAR_CACHE:-$HOME/.cache/cirelay/pulsar-$PULSAR_VERSION}"
HEAP="${CIRELAY_PULSAR_HEAP:-512m}"
READY_TIMEOUT="${CIRELAY_PULSAR_READY_TIMEOUT:-180}"
STOP_TIMEOUT="${CIRELAY_PULSAR_STOP_TIMEOUT:-60}"
SUPERUSER="admin"
MAIN_CLASS=org.apache.pulsar.PulsarStandaloneStarter
JAVA=java

say() { echo "standalone.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# --- tools ---------------------------------------------------------------------------------------

java_major() {
    local v
    v="$("$1" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n1)"
    v="${v#1.}"
    echo "${v%%[.+-]*}"
}

find_java17() {
    local candidate
    for candidate in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java || true)" \
        /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/*/bin/java; do
        if [[ -x "$candidate" ]] && (($(java_major "$candidate") >= 17)); then
            JAVA="$candidate"
            return 0
        fi
    done
    return 1
}

# A fresh machine of the CI kind is Debian with nothing but Python: install what is missing.
ensure_tools() {
    local need_mvn="$1" packages=()
    find_java17 || packages+=(openjdk-17-jre-headless)
    if [[ "$need_mvn" == yes ]] && ! command -v mvn >/dev/null; then packages+=(maven); fi
    command -v curl >/dev/null || packages+=(curl)
    command -v openssl >/dev/null || packages+=(openssl)
    command -v flock >/dev/null || packages+=(util-linux)
    ((${#packages[@]} == 0)) && return 0
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
        die "missing ${packages[*]}: install them (Java 17+, Maven 3.8+, curl, openssl)"
    fi
    say "installing ${packages[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2 ||
        die "apt-get install ${packages[*]} failed"
    find_java17 || die "no Java 17+ after installing openjdk-17-jre-headless"
}

# --- jars ----------------------------------------------------------------------------------------

LIB="$CACHE/lib"

ensure_jars() {
    [[ -f "$CACHE/complete" ]] && return 0
    ensure_tools yes
    mkdir -p "$CACHE"
    # Two test runs starting together must not resolve into the same directory.
    exec 9>"$CACHE/lock"
    flock 9
    if [[ ! -f "$CACHE/complete" ]]; then
        local tmp="$CACHE/lib.partial" started=$SECONDS
        local settings="${CIRELAY_MAVEN_SETTINGS-$HERE/settings.xml}"
        local args=(-B -q -f "$HERE/pom.xml" "-Dpulsar.version=$PULSAR_VERSION"
            dependency:copy-dependencies -DincludeScope=runtime "-DoutputDirectory=$tmp")
        [[ -n "$settings" ]] && args=(-s "$settings" "${args[@]}")
        rm -rf "$tmp"
        say "resolving Pulsar $PULSAR_VERSION jars from Maven Central into $LIB"
        # Maven 3.8 prints colour resets even in batch/quiet mode.
        mvn "${args[@]}" 2>&1 | sed -e 's/\x1b\[[0-9;]*m//g' -e '/^$/d' >&2 ||
            die "Maven could not resolve the Pulsar $PULSAR_VERSION jars"
        rm -rf "$LIB"
        mv "$tmp" "$LIB"
        touch "$CACHE/complete"
        say "jars resolved in $((SECONDS - started)) s ($(find "$LIB" -name '*.jar' | wc -l) jars)"
    fi
    exec 9>&-
}

# --- class-data sharing ---------------------------------------------------------------------------
# Loading and verifying ~30k classes from 279 jars is most of the start-up on two cores. A dynamic
# AppCDS archive, dumped once by a training broker, maps them pre-parsed. It is only valid for the
# exact JVM build and jar files, hence keyed by Java version inside the jar cache; the JVM silently
# runs without it if it does not match.

cds_archive() {
    local version
    version="$("$JAVA" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n1)"
    echo "$CACHE/cds-java-$version.jsa"
}

ensure_cds() {
    local archive train
    [[ "${CIRELAY_PULSAR_CDS:-1}" == 0 || -n "${CDS_DUMP_TO:-}" ]] && return 0
    archive="$(cds_archive)"
    [[ -f "$archive" ]] && return 0
    exec 9>"$CACHE/lock"
    flock 9
    if [[ ! -f "$archive" ]]; then
        train="$CACHE/cds-training"
        say "one-time training run to build the class-data archive $archive"
        rm -f "$archive.partial"
        # The training broker runs with the default options, whatever this start was given.
        if CDS_DUMP_TO="$archive.partial" CIRELAY_PULSAR_WATCH_PID='' CIRELAY_PULSAR_JAVA_OPTS='' \
            CIRELAY_PULSAR_HEAP='' "$SELF" start "$train" &&
            "$SELF" stop "$train" &&
            "$JAVA" -Xshare:on "-XX:SharedArchiveFile=$archive.partial" -cp "$LIB/*" -version \
                >/dev/null 2>&1; then
            mv "$archive.partial" "$archive"
        else
            say "no class-data archive (training failed); starting without it"
            "$SELF" stop "$train" || true
            rm -f "$archive.partial"
        fi
        rm -rf "$train"
    fi
    exec 9>&-
}

# --- tokens --------------------------------------------------------------------------------------

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

# HS256 JWT with sub=ROLE (what `pulsar tokens create --secret-key` makes), no expiry.
mint_token() {
    local key_file="$1" role="$2" header payload signature hexkey
    [[ "$role" =~ ^[A-Za-z0-9._@:-]+$ ]] || die "role must match [A-Za-z0-9._@:-]+: $role"
    hexkey="$(od -An -v -tx1 "$key_file" | tr -d ' \n')"
    header="$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)"
    payload="$(printf '{"sub":"%s"}' "$role" | b64url)"
    signature="$(printf '%s.%s' "$header" "$payload" |
        openssl dgst -sha256 -mac HMAC -macopt "hexkey:$hexkey" -binary | b64url)"
    printf '%s.%s.%s\n' "$header" "$payload" "$signature"
}

# --- ports ---------------------------------------------------------------------------------------

# shellcheck source=../ports.sh
source "$HERE/../ports.sh"

# --- state in DIR --------------------------------------------------------------------------------

check_dir() {
    [[ -n "${1:-}" ]] || die "usage: standalone.sh $CMD DIR"
    # pulsar.env is parsed as plain KEY=VALUE lines, so keep paths free of quoting trouble.
    [[ "$1" =~ ^[A-Za-z0-9._/+@,:=-]+$ ]] || die "DIR may only contain [A-Za-z0-9._/+@,:=-]: $1"
}

broker_pid() {
    local pid
    [[ -f "$DIR/pulsar.pid" ]] || return 1
    pid="$(<"$DIR/pulsar.pid")"
    # Guard against a recycled pid: it must be our JVM with this DIR's config.
    [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" |
        grep -qF -- "$DIR/conf/standalone.conf" && echo "$pid"
}

write_config() {
    local secret_b64 admin_token
    secret_b64="$(openssl base64 -A <"$DIR/auth/secret.key")"
    admin_token="$(mint_token "$DIR/auth/secret.key" "$SUPERUSER")"
    mkdir -p "$DIR/conf"
    # Keys as in Pulsar's conf/standalone.conf; everything unset keeps Pulsar's defaults. The
    # in-process bookie reads this same file as its ServerConfiguration.
    cat >"$DIR/conf/standalone.conf" <<EOF
# Generated by tests/pulsar/standalone.sh
clusterName=standalone
# Empty: standalone keeps its metadata in RocksDB (--metadata-dir).
metadataStoreUrl=
configurationMetadataStoreUrl=
bindAddress=127.0.0.1
advertisedAddress=127.0.0.1
brokerServicePort=$BROKER_PORT
webServicePort=$WEB_PORT

# Small thread pools and no optional services: two cores, started once per test run.
numOrderedExecutorThreads=2
numCacheExecutorThreadPoolSize=2
managedLedgerNumSchedulerThreads=2
webSocketServiceEnabled=false
transactionCoordinatorEnabled=false
loadManagerClassName=org.apache.pulsar.broker.loadbalance.NoopLoadManager
loadBalancerEnabled=false
brokerShutdownTimeoutMs=30000

# Tests create topics on demand and expect them to stay (TDMQ does not delete idle topics).
allowAutoTopicCreation=true
allowAutoTopicCreationType=non-partitioned
brokerDeleteInactiveTopicsEnabled=false

# JWT auth as TDMQ for Pulsar uses it.
authenticationEnabled=true
authenticationProviders=org.apache.pulsar.broker.authentication.AuthenticationProviderToken
authorizationEnabled=true
superUserRoles=$SUPERUSER
tokenSecretKey=data:;base64,$secret_b64
brokerClientAuthenticationPlugin=org.apache.pulsar.client.impl.auth.AuthenticationToken
brokerClientAuthenticationParameters={"token":"$admin_token"}

# One bookie: ensembles of one; small caches for a 512m heap.
managedLedgerDefaultEnsembleSize=1
managedLedgerDefaultWriteQuorum=1
managedLedgerDefaultAckQuorum=1
managedLedgerCacheSizeMB=32

# --- in-process bookie ---
ledgerStorageClass=org.apache.bookkeeper.bookie.storage.ldb.DbLedgerStorage
dbStorage_writeCacheMaxSizeMb=16
dbStorage_readAheadCacheMaxSizeMb=16
dbStorage_rocksDB_blockCacheSize=16777216
dbStorage_rocksDB_writeBufferSizeMB=4
dbStorage_rocksDB_sstSizeInMB=4
# Entries go to the journal (not only the write cache), so a broker that dies before its next
# flush still has every acknowledged message on restart.
journalWriteData=true
journalSyncData=false
journalMaxGroupWaitMSec=1
journalPreAllocSizeMB=4
flushInterval=60000
gcWaitTime=300000
diskUsageThreshold=0.99
diskUsageWarnThreshold=0.99
allowLoopback=true
listeningInterface=lo
# Without this the bookie ignores --bookkeeper-port and takes any free port.
allowEphemeralPorts=true
httpServerEnabled=false
EOF
    cat >"$DIR/conf/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $DIR/logs/pulsar.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{ISO8601} [%t] %-5level %logger{1} - %msg%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
EOF
}

write_env() {
    local admin_token
    admin_token="$(mint_token "$DIR/auth/secret.key" "$SUPERUSER")"
    cat >"$DIR/pulsar.env.partial" <<EOF
PULSAR_URL=pulsar://127.0.0.1:$BROKER_PORT
PULSAR_ADMIN_URL=http://127.0.0.1:$WEB_PORT
PULSAR_TOKEN=$admin_token
PULSAR_SUPERUSER=$SUPERUSER
PULSAR_SECRET_KEY_FILE=$DIR/auth/secret.key
PULSAR_CLUSTER=standalone
PULSAR_VERSION=$PULSAR_VERSION
PULSAR_BROKER_PORT=$BROKER_PORT
PULSAR_WEB_PORT=$WEB_PORT
PULSAR_BOOKIE_PORT=$BOOKIE_PORT
PULSAR_PID=$1
PULSAR_DIR=$DIR
PULSAR_LOG=$DIR/logs/pulsar.log
EOF
    mv "$DIR/pulsar.env.partial" "$DIR/pulsar.env"
}

load_env() {
    [[ -f "$DIR/pulsar.env" ]] || die "no broker state in $DIR (run: standalone.sh start $DIR)"
    BROKER_PORT="$(sed -n 's/^PULSAR_BROKER_PORT=//p' "$DIR/pulsar.env")"
    WEB_PORT="$(sed -n 's/^PULSAR_WEB_PORT=//p' "$DIR/pulsar.env")"
    BOOKIE_PORT="$(sed -n 's/^PULSAR_BOOKIE_PORT=//p' "$DIR/pulsar.env")"
    PULSAR_VERSION="$(sed -n 's/^PULSAR_VERSION=//p' "$DIR/pulsar.env")"
    TOKEN="$(sed -n 's/^PULSAR_TOKEN=//p' "$DIR/pulsar.env")"
}

# --- process -------------------------------------------------------------------------------------

launch() {
    local archive opts=(
        "-Xms128m" "-Xmx$HEAP" "-XX:MaxDirectMemorySize=256m"
        # A test broker on two cores: Serial GC has the smallest footprint and no GC threads
        # competing with the broker; C1 alone halves start-up CPU and, measured here, delivers the
        # same throughput to Python clients as C2 (whose compiling competes for the same cores).
        -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+PerfDisableSharedMem
        -Djava.net.preferIPv4Stack=true
        -Dio.netty.tryReflectionSetAccessible=true
        --add-opens java.base/java.io=ALL-UNNAMED --add-opens java.base/java.util.zip=ALL-UNNAMED
        --add-opens java.base/java.nio=ALL-UNNAMED --add-opens java.base/jdk.internal.misc=ALL-UNNAMED
        --add-opens java.base/sun.net=ALL-UNNAMED --add-opens java.management/sun.management=ALL-UNNAMED
        --add-opens java.base/jdk.internal.platform=ALL-UNNAMED
        -Dbookkeeper.metadata.bookie.drivers=org.apache.pulsar.metadata.bookkeeper.PulsarMetadataBookieDriver
        -Dbookkeeper.metadata.client.drivers=org.apache.pulsar.metadata.bookkeeper.PulsarMetadataClientDriver
        # The standalone's own shutdown hook flushes the logs last; log4j's would close them early.
        -Dlog4j.shutdownHookEnabled=false
        "-Dlog4j.configurationFile=$DIR/conf/log4j2.properties"
        "-Djava.io.tmpdir=$DIR/tmp"
    )
    archive="$(cds_archive)"
    if [[ -n "${CDS_DUMP_TO:-}" ]]; then
        opts+=("-XX:ArchiveClassesAtExit=$CDS_DUMP_TO" -Xlog:cds=off -Xlog:cds+dynamic=off)
    elif [[ "${CIRELAY_PULSAR_CDS:-1}" != 0 && -f "$archive" ]]; then
        opts+=("-XX:SharedArchiveFile=$archive")
    fi
    # shellcheck disable=SC2206  # word-splitting the user's extra options is the point
    opts+=(${CIRELAY_PULSAR_JAVA_OPTS:-})
    mkdir -p "$DIR/logs" "$DIR/tmp" "$DIR/data"
    # setsid: a Ctrl-C aimed at the test run must not kill the broker mid-write; the test run (or
    # the watchdog) stops it gracefully instead.
    (cd "$DIR" && exec setsid "$JAVA" "${opts[@]}" -cp "$LIB/*" "$MAIN_CLASS" \
        --config "$DIR/conf/standalone.conf" -nfw -nss -a 127.0.0.1 \
        --metadata-dir "$DIR/data/metadata" --bookkeeper-dir "$DIR/data/bookkeeper" \
        --bookkeeper-port "$BOOKIE_PORT" \
        >>"$DIR/logs/console.log" 2>&1 </dev/null) &
    echo $! >"$DIR/pulsar.pid"
}

admin_get() {
    curl -fsS --max-time 10 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$WEB_PORT$1"
}

# Ready = the standalone created public/default, and the broker's own health check (it produces
# and consumes on a heartbeat topic, so broker, bookie and metadata store all work) says ok.
wait_ready() {
    local pid="$1" deadline=$((SECONDS + READY_TIMEOUT)) namespaces_seen=no
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if [[ "$namespaces_seen" == no ]]; then
            admin_get /admin/v2/namespaces/public 2>/dev/null | grep -qF '"public/default"' &&
                namespaces_seen=yes
        elif [[ "$(admin_get /admin/v2/brokers/health 2>/dev/null)" == ok ]]; then
            return 0
        fi
        sleep 0.25
    done
    return 1
}

log_tail() {
    say "---- $DIR/logs/pulsar.log (tail) ----"
    tail -n 60 "$DIR/logs/pulsar.log" >&2 2>/dev/null || true
    say "---- $DIR/logs/console.log (tail) ----"
    tail -n 20 "$DIR/logs/console.log" >&2 2>/dev/null || true
}

# Waits for the pid to exit without polling in bash; true if it exited within $2 seconds.
await_exit() { timeout "$2" tail --pid="$1" -f /dev/null 2>/dev/null; }

terminate() {
    local pid
    pid="$(broker_pid)" || { rm -f "$DIR/pulsar.pid"; return 0; }
    # SIGTERM runs the standalone's shutdown hook: topics, ledgers and the bookie close cleanly.
    kill -TERM "$pid" 2>/dev/null || true
    if ! await_exit "$pid" "$STOP_TIMEOUT"; then
        say "broker $pid still running ${STOP_TIMEOUT}s after SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        await_exit "$pid" 30 || die "broker $pid survived SIGKILL"
    fi
    rm -f "$DIR/pulsar.pid"
}

start_watchdog() {
    local watch="${CIRELAY_PULSAR_WATCH_PID:-}" pid
    [[ -n "$watch" ]] || return 0
    if [[ -f "$DIR/watchdog.pid" ]] && kill -0 "$(<"$DIR/watchdog.pid")" 2>/dev/null; then
        return 0
    fi
    # shellcheck disable=SC2016  # expanded by the watchdog's own shell, from its arguments
    setsid bash -c 'tail --pid="$0" -f /dev/null; exec "$1" stop "$2"' \
        "$watch" "$SELF" "$DIR" >>"$DIR/logs/watchdog.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$DIR/watchdog.pid"
}

stop_watchdog() {
    local pid
    [[ -f "$DIR/watchdog.pid" ]] || return 0
    pid="$(<"$DIR/watchdog.pid")"
    rm -f "$DIR/watchdog.pid"
    # The watchdog itself ends up here (it execs `stop`): it must not kill itself.
    [[ "$pid" == "$$" ]] && return 0
    kill -TERM -- "-$pid" 2>/dev/null || true
}

# Launches with the current config and waits; on failure leaves the log tail on stderr.
run_broker() {
    local pid started=$SECONDS
    launch
    pid="$(<"$DIR/pulsar.pid")"
    if ! wait_ready "$pid"; then
        return 1
    fi
    write_env "$pid"
    say "broker ready in $((SECONDS - started)) s: pulsar://127.0.0.1:$BROKER_PORT, http://127.0.0.1:$WEB_PORT (pid $pid)"
}

# --- commands ------------------------------------------------------------------------------------

cmd_start() {
    local attempt
    ensure_jars
    ensure_tools no
    ensure_cds
    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd)"
    check_dir "$DIR"
    if broker_pid >/dev/null; then die "a broker is already running in $DIR"; fi
    rm -rf "$DIR/data" "$DIR/conf" "$DIR/auth" "$DIR/tmp" "$DIR/logs" "$DIR/pulsar.env"
    mkdir -p "$DIR/auth" "$DIR/logs"
    (umask 077 && openssl rand 32 >"$DIR/auth/secret.key")
    TOKEN="$(mint_token "$DIR/auth/secret.key" "$SUPERUSER")"
    # Free ports are picked, not reserved: if another process takes one first, pick again.
    for attempt in 1 2 3; do
        read -r BROKER_PORT WEB_PORT BOOKIE_PORT <<<"$(pick_free_ports 3)"
        write_config
        if run_broker; then
            start_watchdog
            return 0
        fi
        terminate
        grep -q 'Address already in use' "$DIR/logs/pulsar.log" "$DIR/logs/console.log" 2>/dev/null ||
            break
        say "port taken meanwhile (attempt $attempt): retrying with other ports"
        rm -rf "$DIR/data"
        mv "$DIR/logs" "$DIR/logs.attempt-$attempt"
        mkdir -p "$DIR/logs"
    done
    log_tail
    die "broker did not become ready within ${READY_TIMEOUT}s (logs in $DIR/logs)"
}

cmd_resume() {
    DIR="$(cd "$DIR" && pwd)"
    check_dir "$DIR"
    load_env
    ensure_jars
    ensure_tools no
    if broker_pid >/dev/null; then die "a broker is already running in $DIR"; fi
    if ! run_broker; then
        terminate
        log_tail
        die "halted broker did not come back within ${READY_TIMEOUT}s (logs in $DIR/logs)"
    fi
    start_watchdog
}

cmd_halt() {
    DIR="$(cd "$DIR" && pwd)"
    terminate
}

cmd_stop() {
    [[ -d "$DIR" ]] || return 0
    DIR="$(cd "$DIR" && pwd)"
    stop_watchdog
    terminate
    rm -rf "$DIR/data" "$DIR/conf" "$DIR/auth" "$DIR/tmp" "$DIR/pulsar.env" "$DIR/pulsar.env.partial"
}

CMD="${1:-}"
case "$CMD" in
start | stop | halt | resume | restart)
    check_dir "${2:-}"
    DIR="$2"
    case "$CMD" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    halt) cmd_halt ;;
    resume) cmd_resume ;;
    restart) cmd_halt && cmd_resume ;;
    esac
    ;;
token)
    check_dir "${2:-}"
    [[ -n "${3:-}" ]] || die "usage: standalone.sh token DIR ROLE"
    [[ -f "$2/auth/secret.key" ]] || die "no secret key in $2 (run: standalone.sh start $2)"
    mint_token "$2/auth/secret.key" "$3"
    ;;
prepare)
    ensure_jars
    ensure_tools no
    ensure_cds
    echo "$CACHE"
    ;;
*)
    sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
