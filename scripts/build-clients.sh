#!/usr/bin/env bash
# Builds the real-client sessions that tests/filter_clients.rs runs straight against nats-server and
# through natsguard, into target/clients/:
#   nats_go_session   nats.go, the Go client (tests/clients/nats_go_session: go.mod and go.sum pin it)
#   jnats_session/    jnats, the Java client (tests/clients/jnats_session/pom.xml pins it): classes/
#                     and classpath.txt (the jars in Maven's local repository, ~/.m2)
# Modules and jars come from the Go module proxy and Maven Central on the first build. Idempotent:
# a session whose sources have not changed since its last build (a stamp holds their hash) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/clients
mkdir -p "$out"

sources_hash() {
    find "tests/clients/$1" -type f | sort | xargs sha256sum | sha256sum | cut -d' ' -f1
}

# build <session> <output> <command...>: runs the command unless the output is there and the
# session's stamp matches its sources.
build() {
    local session=$1 output=$2 stamp=$out/$1.sha256 want
    shift 2
    want=$(sources_hash "$session")
    [[ -e $output && -f $stamp && $(cat "$stamp") == "$want" ]] && return
    echo "build-clients: building $session"
    "$@"
    echo "$want" > "$stamp"
}

command -v go >/dev/null || { echo "build-clients: go not found; the nats.go session needs Go 1.26 or newer" >&2; exit 1; }
if ! command -v mvn >/dev/null || ! command -v javac >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven default-jdk-headless >/dev/null
    else
        echo "build-clients: the jnats session needs Maven and a JDK 17 or newer (Debian: apt-get install maven default-jdk-headless)" >&2
        exit 1
    fi
fi

build nats_go_session "$out/nats_go_session" \
    go -C tests/clients/nats_go_session build -o "$PWD/$out/nats_go_session" .
# Maven's console output goes to a log, shown when the build fails.
maven_compile() {
    mvn --batch-mode -f tests/clients/jnats_session/pom.xml compile > "$out/jnats_session.log" 2>&1 \
        || { cat "$out/jnats_session.log" >&2; exit 1; }
}
build jnats_session "$out/jnats_session/classpath.txt" maven_compile
