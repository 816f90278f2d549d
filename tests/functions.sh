# tests/functions.sh: sourced by every shell test (bash). TAP output for automake's TAP
# driver, temporary folders that go away, finding our programs and the fixtures, and a
# QEMU runner that waits for a line on the serial console.
#
#   plan N | skip_all REASON | bail REASON
#   ok DESC [CMD ARGS...]     passes when CMD exits 0 (no CMD: passes)
#   not_ok DESC               a failure
#   is GOT WANT DESC          string equality
#   diag TEXT                 a "# " comment (to stderr-safe stdout)
#   require_tool NAME...      skip_all unless every tool is on PATH
#   tmpdir                    prints a fresh folder removed at exit
#   p2v_bin NAME              prints the path of one of our built programs
#   fixture NAME              prints a fixture image's path (builds it when missing)
#   injected_fixture NAME [FMT]
#                             prints the path of a copy of fixture NAME (as FMT: raw, the
#                             default, or qcow2...) made bootable on virtio by our p2v-inject
#                             (cached beside the fixtures, keyed by the fixture, the format and
#                             the p2v-inject binary); beside it report.json (p2v-inject --json),
#                             inject.log (stderr) and inject.secs
#   qemu_boot_expect LOG TIMEOUT PATTERN QEMU-ARGS...
#                             boots, returns 0 when PATTERN shows on the serial log
#                             within TIMEOUT seconds, 1 otherwise; QEMU is stopped.

: "${top_srcdir:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${top_builddir:=$PWD}"
export top_srcdir top_builddir

_tap_n=0
_tap_fail=0
_tap_planned=""
# every tmpdir lives under one folder per test run, removed at exit (P2V_KEEP=1 keeps it)
_tap_root=$(mktemp -d "${TMPDIR:-/var/tmp}/p2vkit-test.XXXXXX") || exit 99

_tap_cleanup() {
    if [ -n "${P2V_KEEP:-}" ]; then echo "# kept $_tap_root"; return; fi
    rm -rf "$_tap_root"
}
_tap_exit() {
    local rc=$?
    _tap_cleanup
    if [ -n "$_tap_planned" ] && [ "$_tap_planned" != skip ] && [ "$_tap_n" -ne "$_tap_planned" ]; then
        echo "# planned $_tap_planned tests, ran $_tap_n"
        exit 1
    fi
    [ "$_tap_fail" -eq 0 ] || exit 1
    exit $rc
}
trap _tap_exit EXIT

plan() { _tap_planned=$1; echo "1..$1"; }
skip_all() { _tap_planned=skip; echo "1..0 # SKIP $*"; exit 0; }
bail() { echo "Bail out! $*"; _tap_fail=1; exit 1; }
# skip N REASON: N planned tests reported as skipped
skip() { local i; for i in $(seq "$1"); do _tap_n=$((_tap_n + 1)); echo "ok $_tap_n # SKIP $2"; done; }
# sanitizer_run: true in the ASan + UBSan pass of scripts/test-all (P2V_SANITIZER_RUN=1)
sanitizer_run() { [ -n "${P2V_SANITIZER_RUN:-}" ]; }
diag() { local l; while IFS= read -r l; do echo "# $l"; done <<<"$*"; }

ok() {
    local desc=$1; shift
    _tap_n=$((_tap_n + 1))
    if [ $# -eq 0 ]; then
        echo "ok $_tap_n - $desc"
        return 0
    fi
    local out rc
    out=$("$@" 2>&1); rc=$?
    if [ $rc -eq 0 ]; then
        echo "ok $_tap_n - $desc"
    else
        echo "not ok $_tap_n - $desc"
        _tap_fail=1
        diag "exit $rc: $*"
        diag "$(printf '%s\n' "$out" | tail -n 20)"
    fi
    return $rc
}
not_ok() {
    _tap_n=$((_tap_n + 1))
    echo "not ok $_tap_n - $1"
    _tap_fail=1
    return 1
}
is() {
    _tap_n=$((_tap_n + 1))
    if [ "$1" = "$2" ]; then
        echo "ok $_tap_n - $3"
    else
        echo "not ok $_tap_n - $3"
        _tap_fail=1
        diag "got:  '$1'"
        diag "want: '$2'"
        return 1
    fi
}

require_tool() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || skip_all "$t is not installed (scripts/setup-deps installs it)"
    done
}

tmpdir() {
    mktemp -d "$_tap_root/t.XXXXXX" || bail "mktemp failed"
}

p2v_bin() {
    local n=$1 c
    for c in "$top_builddir/$n" "$top_builddir"/*/"$n" "$top_builddir"/tests/*/"$n" \
             "$top_builddir/.libs/$n"; do
        if [ -x "$c" ] && [ -f "$c" ]; then echo "$c"; return 0; fi
    done
    bail "$n is not built in $top_builddir (run make)"
}

fixture() {
    "$top_srcdir/tests/fixtures/fixture" "$1" || bail "fixture $1 could not be built"
}

injected_fixture() {
    local name=$1 fmt=${2:-raw} img inject key dir cache=${P2V_FIXTURE_CACHE:-/var/tmp/p2vkit-fixtures}
    img=$(fixture "$name") || return 1
    inject=$(p2v_bin p2v-inject) || return 1
    # keyed by the sources p2v-inject is built from (not the binary, which differs between
    # build trees), so that a new clone does not inject again
    key=$( { cat "$(dirname "$img")/fixture.env"; echo "$fmt"
             find "$top_srcdir/driver-inject" "$top_srcdir/common" "$top_srcdir/disk-formats" \
                 -name '*.[ch]' | LC_ALL=C sort | xargs cat; } | sha256sum | cut -c1-12)
    dir=$cache/injected-$name-$fmt-$key
    if [ ! -f "$dir/disk.$fmt" ]; then
        (
            exec 9>"$cache/.injected-$name-$fmt.lock"
            flock 9
            [ -f "$dir/disk.$fmt" ] && exit 0
            rm -rf "$cache/injected-$name-$fmt"-* "$cache/injected-$name"-[0-9a-f]*[0-9a-f]  # older copies
            t=$dir.tmp.$$
            mkdir -p "$t"
            if [ "$fmt" = raw ]; then cp --sparse=always "$img" "$t/disk.raw"; else qemu-img convert -O "$fmt" "$img" "$t/disk.$fmt"; fi &&
                t0=$SECONDS &&
                "$inject" -f "$fmt" --json "$t/disk.$fmt" >"$t/report.json" 2>"$t/inject.log" &&
                echo $((SECONDS - t0)) >"$t/inject.secs" &&
                cp "$(dirname "$img")/fixture.env" "$t/" &&
                mv "$t" "$dir" || { cat "$t/inject.log" >&2; rm -rf "$t"; exit 1; }
        ) || { echo "injected_fixture: p2v-inject on $name failed" >&2; return 1; }
    fi
    echo "$dir/disk.$fmt"
}

qemu_boot_expect() {
    local log=$1 timeout=$2 pattern=$3; shift 3
    : >"$log"
    qemu-system-x86_64 -accel tcg -m 1024 -display none -no-reboot -nodefaults \
        -serial "file:$log" "$@" </dev/null >"$log.qemu" 2>&1 &
    local pid=$! t=0 rc=1
    while [ "$t" -lt "$((timeout * 2))" ]; do
        if grep -aq -E -- "$pattern" "$log"; then rc=0; break; fi
        kill -0 "$pid" 2>/dev/null || { grep -aq -E -- "$pattern" "$log" && rc=0; break; }
        sleep 0.5
        t=$((t + 1))
    done
    kill -TERM "$pid" 2>/dev/null
    for t in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return $rc
}
