# tests/integration/media-lib.sh: sourced by the media-*.sh tests (after
# tests/functions.sh and tests/capture-lib.sh). Builds p2v-mkmedia's media once per set of
# inputs (cached), keeps one server identity for the cached media, boots them under QEMU
# TCG against a p2v-server on 127.0.0.1 reached only through QEMU's guestfwd, and checks
# the captured job against the fixture.
#
#   media_store STORE          a store with the cached identity (FP, TOKEN set)
#   media_build VAR ARGS...    p2v-mkmedia ARGS (no --out) into the cache; VAR = its path
#   media_net [NETDEV-OPTS]    the -netdev/-device arguments (in NET): user networking,
#                              restrict=on, 10.0.2.100:7878 forwarded to 127.0.0.1:$PORT
#   media_run NAME TIMEOUT QEMU-ARGS...
#                              boots; the serial log is $work/NAME.log (unless the args
#                              carry their own serial); returns when QEMU exits, when
#                              $MEDIA_UNTIL shows on the log, or at TIMEOUT (QEMU is then
#                              stopped): 0 when QEMU exited by itself. Watching
#                              $store/jobs/$MEDIA_JOB, sets T_CONTACT (job created),
#                              T_FIRST (first data on disk) and T_END (seconds from start)
#   media_answer LOG FIFO PATTERN ANSWER ...
#                              in the background: each time PATTERN shows (in order),
#                              writes ANSWER and a newline into FIFO (the guest's serial)
#   check_job DESC JOB IMG     the job's disk0 against the raw fixture IMG: qemu-img check,
#                              partition table and used blocks (compare-used.py), e2fsck -fn
#   no_job_data JOB            no disk data of JOB on the server
MKMEDIA=$(p2v_bin p2v-mkmedia)
export P2V_MEDIA_DIR=$top_srcdir/p2v-agent/media
MEDIA_CACHE=${P2V_MEDIA_CACHE:-/var/tmp/p2vkit-media-cache}
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
mkdir -p "$MEDIA_CACHE" || bail "cannot create $MEDIA_CACHE"
find "$MEDIA_CACHE" -mindepth 1 -maxdepth 1 -name 'm-*' -mtime +3 -exec rm -rf {} + 2>/dev/null

_media_qemu=()
_media_bg=()
_media_cleanup() {
    local p
    for p in "${_media_qemu[@]}" "${_media_bg[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    _capture_cleanup
    return 0   # _tap_exit's status comes from the test, not from this cleanup
}
trap '_media_cleanup; _tap_exit' EXIT

media_store() {
    local tpl=$MEDIA_CACHE/store-identity
    if [ ! -f "$tpl/token" ]; then
        rm -rf "$tpl.new"
        "$SERVER" init --store "$tpl.new" --json >/dev/null || bail "p2v-server init failed"
        mv "$tpl.new" "$tpl" 2>/dev/null || rm -rf "$tpl.new"
    fi
    mkdir -p "$1" && cp -a "$tpl/." "$1/" && rm -rf "$1/jobs" && mkdir "$1/jobs" ||
        bail "cannot copy the store identity"
    TOKEN=$(cat "$1/token")
    FP=SHA256:$(openssl x509 -in "$1/server.crt" -outform DER | sha256sum | cut -c1-64)
}

media_build() {
    local var=$1 key path ext=iso t0; shift
    case " $* " in *" --format pxe "*) ext=pxe ;; esac
    key=$( { cat "$MKMEDIA" "$P2V_MEDIA_DIR"/* "$AGENT" /bin/busybox; ls -l --time-style=+%s /boot;
             printf '%s\n' "$@"; } | sha256sum | cut -c1-16)
    path=$MEDIA_CACHE/m-$key.$ext
    if [ ! -e "$path" ]; then
        t0=$(date +%s.%N)
        "$MKMEDIA" -q --out "$path" "$@" || bail "p2v-mkmedia $* failed"
        diag "built $(basename "$path") in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s ($(du -sk "$path" | cut -f1) KiB)"
    fi
    touch "$path"
    printf -v "$var" '%s' "$path"
}

media_net() {
    NET=(-netdev "user,id=n0,restrict=on${1:+,$1},guestfwd=tcp:10.0.2.100:7878-cmd:busybox nc 127.0.0.1 $PORT"
         -device e1000,netdev=n0,romfile=)
}

media_run() {
    local name=$1 timeout=$2 log=$work/$1.log serial=(); shift 2
    case " $* " in *" -serial "*|*" -chardev "*) ;; *) serial=(-serial "file:$log"); : >"$log" ;; esac
    T_CONTACT="" T_FIRST="" T_END=""
    [ -n "${MEDIA_LOG:-}" ] && log=$MEDIA_LOG
    local t0 now pid rc=1 jd=$store/jobs/${MEDIA_JOB:-none} sz sz0=""
    t0=$(date +%s.%N)
    qemu-system-x86_64 -accel tcg -m 1024 -display none -no-reboot -nodefaults \
        "${serial[@]}" "$@" </dev/null >"$work/$name.qemu" 2>&1 &
    pid=$!
    _media_qemu+=("$pid")
    local el=0
    while :; do
        now=$(date +%s.%N)
        el=$(awk -v a="$t0" -v b="$now" 'BEGIN{printf "%.1f", b-a}')
        if [ -z "$T_CONTACT" ] && [ -d "$jd" ]; then T_CONTACT=$el; fi
        # first data: a disk file of the job grows past the size it was created with
        if [ -z "$T_FIRST" ] && [ -d "$jd" ]; then
            sz=$(find "$jd" -maxdepth 1 -name 'disk*.part' -printf '%s\n' 2>/dev/null | sort -n | tail -n 1)
            if [ -n "$sz" ]; then
                if [ -z "$sz0" ]; then sz0=$sz; elif [ "$sz" -gt "$sz0" ]; then T_FIRST=$el; fi
            fi
            [ -z "$T_FIRST" ] && [ -f "$jd/disk0.qcow2" ] && T_FIRST=$el
        fi
        if [ -z "$T_END" ] && [ -f "$jd/disk0.qcow2" ]; then T_END=$el; fi
        if ! kill -0 "$pid" 2>/dev/null; then rc=0; break; fi
        if [ -n "${MEDIA_UNTIL:-}" ] && grep -aq -E -- "$MEDIA_UNTIL" "$log" 2>/dev/null; then break; fi
        if awk -v e="$el" -v t="$timeout" 'BEGIN{exit !(e >= t)}'; then diag "$name: timed out after $timeout s"; break; fi
        sleep 0.2
    done
    T_QEMU=$el
    kill -TERM "$pid" 2>/dev/null
    local i
    for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return $rc
}

media_answer() {
    local log=$1 fifo=$2; shift 2
    (
        # a prompt asked again is answered at its next showing: its Nth answer waits for
        # its Nth appearance on the console
        declare -A asked
        while [ $# -ge 2 ]; do
            asked[$1]=$(( ${asked[$1]:-0} + 1 ))
            until [ "$(grep -a -o -F -- "$1" "$log" 2>/dev/null | wc -l)" -ge "${asked[$1]}" ]; do
                sleep 0.3
            done
            sleep 0.5
            printf '%s\n' "$2" >"$fifo"
            shift 2
        done
    ) &
    _media_bg+=("$!")
}

check_job() {
    local desc=$1 job=$2 src=$3 copy=$store/jobs/$2/disk0.qcow2 raw=$work/copy.raw off size
    ok "$desc: job '$job' state received" test "$(job_field "$store" "$job" state)" = received ||
        diag "job.json: $(cat "$store/jobs/$job/job.json" 2>/dev/null)"
    ok "$desc: qemu-img check of the copy" qemu-img check -q "$copy"
    rm -f "$raw"
    qemu-img convert -O raw "$copy" "$raw" 2>/dev/null
    ok "$desc: partition table, boot areas and every used block identical (compare-used.py)" \
        python3 "$top_srcdir/tests/compare-used.py" "$src" "$raw"
    read -r off size < <(sfdisk --json "$src" | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]; p = t["partitions"][0]
print(p["start"] * 512, p["size"] * 512)')
    if loop_ro "$raw" "$off" "$size"; then
        ok "$desc: root file system of the copy passes e2fsck -fn" e2fsck -fn "$LOOP"
        losetup -d "$LOOP"
    else
        not_ok "$desc: loop device for e2fsck"
    fi
    rm -f "$raw"
}

no_job_data() {
    [ -z "$(find "$store/jobs" -name 'disk*' 2>/dev/null)" ]
}

# serial_log_has LOG PATTERN: grep -E on the serial log
serial_has() { grep -aq -E -- "$2" "$1"; }

# boot_ok DESC NAME TIMEOUT QEMU-ARGS...: media_run as a test (passes when QEMU exited by
# itself, i.e. the guest powered off); run in this shell, so that T_* are kept
boot_ok() {
    local desc=$1; shift
    if media_run "$@"; then ok "$desc"; else not_ok "$desc"; diag "$(tail -5 "$work/$1.qemu")"; fi
}
# boot_until DESC NAME TIMEOUT PATTERN QEMU-ARGS...: passes when PATTERN showed on the
# serial log before TIMEOUT (QEMU is then stopped)
boot_until() {
    local desc=$1 name=$2 to=$3 pat=$4; shift 4
    MEDIA_UNTIL=$pat
    media_run "$name" "$to" "$@"
    MEDIA_UNTIL=""
    if serial_has "${MEDIA_LOG:-$work/$name.log}" "$pat"; then ok "$desc"; else not_ok "$desc"; fi
}

# esp_offset IMG: the byte offset of the image's FAT partition (MBR entry 2)
esp_offset() {
    python3 -c 'import struct,sys; d=open(sys.argv[1],"rb").read(512); print(struct.unpack_from("<I", d, 446+16+8)[0] * 512)' "$1"
}
# put_conf IMG FILE: FILE as p2v.conf on the image's FAT partition (mtools, never mounted)
put_conf() {
    MTOOLS_SKIP_CHECK=1 mcopy -o -i "$1@@$(esp_offset "$1")" "$2" ::/p2v.conf
}
# uefi_args: OVMF as pflash (code read-only, a copy of the variables), q35
uefi_args() {
    cp "$OVMF_VARS" "$work/vars.fd"
    UEFI=(-machine q35 -drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE"
          -drive "if=pflash,format=raw,unit=1,file=$work/vars.fd")
}
