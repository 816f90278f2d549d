#!/bin/sh
# seeds-proto.sh DIR: a seed corpus for fuzz-proto: one valid frame of every type (and a
# few variants: MORE flags, ZERO and ZSTD chunks, empty range lists), written by a tiny
# generator compiled here against the codec itself (common/proto.c), so the seeds follow
# the encoders whatever the layouts become.
set -eu
out=$1
mkdir -p "$out"
src=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cc=${CC:-cc}
command -v "$cc" >/dev/null || cc=clang
cat > "$tmp/gen.c" <<'EOF'
#include <stdio.h>
#include <string.h>
#include <zstd.h>
#include "p2v-proto.h"

static const char *dir;
static struct p2v_buf b = P2V_BUF_INIT;

static void emit(const char *name, int r)
{
    char path[4096];
    if (r < 0) {
        fprintf(stderr, "seeds-proto: cannot encode %s\n", name);
        return;
    }
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(b.data, 1, b.len, f);
        fclose(f);
    }
    p2v_buf_reset(&b);
}

int main(int argc, char **argv)
{
    uint8_t hash[32], data[4096], z[8192];
    dir = argc > 1 ? argv[1] : ".";
    for (int i = 0; i < 4096; i++)
        data[i] = (uint8_t)(i % 251 < 200 ? 'a' + i % 7 : i);
    p2v_hash(P2V_HASH_SHA256, data, sizeof data, hash);
    emit("hello", p2v_proto_put_hello(&b, P2V_HASH_SHA256, "0123456789abcdef0123456789abcdef",
                                      "web-01", "3f2a9c", "p2vkit 0.1.0"));
    emit("welcome", p2v_proto_put_welcome(&b, P2V_JOB_RESUME, 32u << 20, "web-01-2"));
    const char *json = "{\"name\":\"web-01\",\"cpus\":4,\"disks\":[{\"name\":\"sda\"}]}";
    emit("facts", p2v_proto_put_facts(&b, json, strlen(json)));
    emit("disk", p2v_proto_put_disk(&b, 0, 8ull << 30, 512, 3ull << 30, P2V_DISK_ALL_BLOCKS,
                                    "sda", "ata-QEMU_HARDDISK_QM00001"));
    struct p2v_range r[3] = {{0, 1 << 20}, {2 << 20, 512}, {1ull << 33, 4096}};
    emit("have", p2v_proto_put_ranges(&b, P2V_MSG_HAVE, P2V_RANGES_MORE, 1, r, 3));
    emit("have-empty", p2v_proto_put_ranges(&b, P2V_MSG_HAVE, 0, 0, r, 0));
    emit("want", p2v_proto_put_ranges(&b, P2V_MSG_WANT, 0, 2, r + 1, 2));
    emit("data", p2v_proto_put_data(&b, 0, 0, 1 << 20, sizeof data, hash, data, sizeof data));
    size_t zn = ZSTD_compress(z, sizeof z, data, sizeof data, 3);
    if (!ZSTD_isError(zn))
        emit("data-zstd", p2v_proto_put_data(&b, P2V_DATA_ZSTD, 3, 0, sizeof data, hash, z, zn));
    emit("data-zero", p2v_proto_put_data(&b, P2V_DATA_ZERO, 1, 4096, 1 << 20, NULL, NULL, 0));
    emit("disk-end", p2v_proto_put_disk_end(&b, P2V_MSG_DISK_END, 0, 3ull << 30));
    emit("disk-ok", p2v_proto_put_disk_end(&b, P2V_MSG_DISK_OK, 0, 3ull << 30));
    emit("done", p2v_proto_put_done(&b));
    emit("finished", p2v_proto_put_finished(&b, "job web-01: 2 disks received, 3.0 GiB"));
    uint64_t offs[2] = {0, 1 << 20};
    uint32_t lens[2] = {1 << 20, 4096};
    uint8_t hs[2][32];
    memcpy(hs[0], hash, 32);
    memset(hs[1], 0x5a, 32);
    emit("hashes", p2v_proto_put_hashes(&b, P2V_RANGES_MORE, 0, offs, lens,
                                        (const uint8_t(*)[32])hs, 2));
    emit("committed", p2v_proto_put_committed(&b, 17, 17u << 20));
    emit("pass", p2v_proto_put_pass(&b, 2, P2V_PASS_DELTA, 5u << 20, 1u << 20, 321, 0));
    emit("pass-final", p2v_proto_put_pass(&b, 3, P2V_PASS_FINAL, 5u << 20, 1u << 20, 90, 85));
    emit("pass-idle", p2v_proto_put_pass(&b, 0, P2V_PASS_IDLE, 0, 0, 0, 0));
    emit("pass-ok", p2v_proto_put_pass_ok(&b, P2V_PASS_CUTOVER));
    emit("error", p2v_proto_put_error(&b, P2V_E_BUSY, "job 'web-01' is held by another session"));
    p2v_buf_release(&b);
    return 0;
}
EOF
# shellcheck disable=SC2046
"$cc" -std=gnu11 -D_GNU_SOURCE -I"$src/common" "$tmp/gen.c" "$src/common/proto.c" \
    "$src/common/buf.c" "$src/common/err.c" "$src/common/rd.c" "$src/common/util.c" \
    "$src/common/tls.c" "$src/common/log.c" \
    $(pkg-config --cflags --libs openssl libzstd) -lm -lpthread -o "$tmp/gen"
"$tmp/gen" "$out"
