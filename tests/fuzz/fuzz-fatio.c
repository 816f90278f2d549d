/* fuzz-fatio.c: libFuzzer harness of the FAT12/16/32 reader (vmm/fatio.c). Each input is
 * the first bytes of a FAT partition of FUZZ_FAT_PART bytes: it is written as a file into
 * a private folder under /dev/shm and the file is extended with zeros to the partition
 * size (so that a FAT32 volume, 33 MiB at least, fits in a seed of its first few hundred
 * KiB, as the unwritten part of a fresh volume reads as zeros), opened as "raw" and the
 * file system over the whole of it opened with vmm_fat_open. When it opens: "/" and "/EFI"
 * are listed, a few fixed paths read (grub.cfg, "." and "..", a directory, a path through
 * a file), then the tree is walked from "/" (bounded in depth and in calls), listing each
 * directory and reading each file with a cap of FUZZ_FAT_CAP bytes. The harness aborts
 * when a success breaks the interface (a read longer than its cap, data without bytes or
 * bytes without data, a listed name that no path can name: empty, "." or "..", or holding
 * '/', '\\' or a control character; a FAT type other than 12, 16, 32; a volume id not ""
 * or "XXXX-XXXX") or a failure has no code or no message.
 * Seeds (seeds-fatio.sh): volumes made by mkfs.vfat (FAT12, FAT16, FAT32), filled by
 * mtools (/EFI/BOOT/grub.cfg, long names, multi-cluster and fragmented files, a FAT32
 * directory of several clusters), their trailing zeros cut off.
 * clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon -Idisk-formats \
 * tests/fuzz/fuzz-fatio.c vmm/fatio.c common/\*.c disk-formats/\*.c ... (see run-fuzzers) */
// fuzz-sources: vmm/fatio.c
#include "fuzz-diskfmt.h"
#include "../../vmm/bootcfg-int.h"

#define FUZZ_FAT_INPUT_MAX (4u << 20) /* longer inputs are skipped */
#define FUZZ_FAT_PART (34u << 20)     /* the partition: the input, then zeros */
#define FUZZ_FAT_CAP (64u << 10)      /* bytes read from one file at most */
#define FUZZ_FAT_CALLS 48             /* list and read calls of the walk */
#define FUZZ_FAT_DEPTH 4              /* directory levels the walk descends */

static void check_err(int r, const struct p2v_err *err)
{
    if (r < 0 && (err->code == 0 || err->msg[0] == '\0'))
        abort();
}

/* Read @path with @cap; the data must be consistent with what the call returned. */
static void read_one(struct vmm_fat *fs, const char *path, size_t cap)
{
    struct p2v_err err = {0};
    uint8_t *data = NULL;
    size_t len = 0;
    int r = vmm_fat_read_file(fs, path, cap, &data, &len, &err);
    check_err(r, &err);
    if (r == 0) {
        if (len > cap || (len == 0) != (data == NULL))
            abort();
        volatile uint8_t sum = 0; /* touch every byte: ASan sees a short buffer */
        for (size_t i = 0; i < len; i++)
            sum += data[i];
        (void)sum;
    }
    free(data);
}

/* List @path; on success *@ents and *@n, checked. */
static int list_one(struct vmm_fat *fs, const char *path, struct vmm_fat_dirent **ents,
                    size_t *n)
{
    struct p2v_err err = {0};
    *ents = NULL;
    *n = 0;
    int r = vmm_fat_list(fs, path, ents, n, &err);
    check_err(r, &err);
    if (r < 0)
        return -1;
    for (size_t i = 0; i < *n; i++) {
        const char *s = (*ents)[i].name;
        if (!s || !*s || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
            abort(); /* no path would name it */
        for (; *s; s++)
            if ((uint8_t)*s < 0x20 || *s == 0x7f || *s == '/' || *s == '\\')
                abort();
    }
    return 0;
}

/* List the directory @path and walk what it holds, while *@calls last. */
static void walk(struct vmm_fat *fs, const char *path, int depth, int *calls)
{
    struct vmm_fat_dirent *ents;
    size_t n;
    if (*calls <= 0)
        return;
    --*calls;
    if (list_one(fs, path, &ents, &n) < 0)
        return;
    for (size_t i = 0; i < n && *calls > 0; i++) {
        char child[4096]; /* a longer path is cut: then simply not found */
        snprintf(child, sizeof child, "%s/%s", strcmp(path, "/") ? path : "", ents[i].name);
        if (ents[i].dir) {
            if (depth < FUZZ_FAT_DEPTH)
                walk(fs, child, depth + 1, calls);
        } else {
            --*calls;
            read_one(fs, child, FUZZ_FAT_CAP);
        }
    }
    vmm_fat_dirents_free(ents, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        fuzz_setup("fatio", "img");
        ready = 1;
    }
    if (size > FUZZ_FAT_INPUT_MAX)
        return 0;
    if (fuzz_write_input(data, size) < 0 || truncate(fuzz_path, FUZZ_FAT_PART) < 0)
        return 0;
    struct p2v_err err = {0};
    struct diskfmt *d = diskfmt_open(fuzz_path, "raw", DISKFMT_RDONLY, &err);
    if (!d)
        return 0;
    struct vmm_fat *fs = vmm_fat_open(d, 0, diskfmt_size(d), &err);
    if (!fs) {
        check_err(-1, &err);
        diskfmt_close(d, NULL);
        return 0;
    }
    unsigned bits = vmm_fat_bits(fs);
    const char *id = vmm_fat_uuid(fs);
    if ((bits != 12 && bits != 16 && bits != 32) || (*id && (strlen(id) != 9 || id[4] != '-')))
        abort();

    struct vmm_fat_dirent *ents;
    size_t n;
    if (list_one(fs, "/EFI", &ents, &n) == 0)
        vmm_fat_dirents_free(ents, n);
    static const char *const paths[] = {
        "/EFI/BOOT/grub.cfg", "/efi/boot/GRUB.CFG", "/EFI/debian/grub.cfg",
        "/boot/grub/grub.cfg", "/syslinux/syslinux.cfg", "/EFI/./BOOT/../BOOT/BOOTX64.EFI",
        "/../EFI/BOOT/grub.cfg", "/EFI", "/", "/EFI/BOOT/grub.cfg/x", "relative/path",
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        read_one(fs, paths[i], FUZZ_FAT_CAP);
    read_one(fs, "/EFI/BOOT/grub.cfg", 16); /* over the cap: EFBIG, or a short file */
    if (list_one(fs, "/EFI/BOOT/grub.cfg", &ents, &n) == 0) /* a file: ENOTDIR */
        vmm_fat_dirents_free(ents, n);
    int calls = FUZZ_FAT_CALLS;
    walk(fs, "/", 0, &calls);

    vmm_fat_close(fs);
    diskfmt_close(d, NULL);
    return 0;
}
