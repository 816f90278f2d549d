/* plan-tool: a driver of libimager's discovery and planning for the shell tests
 * (test-discover-plan.sh), which compare what it says with blkid(8), e2fsck, debugfs and
 * the ntfs-3g tools.
 *
 *   plan-tool discover PATH                discovery as one JSON object
 *   plan-tool show PATH                    discovery as tab-separated lines (for awk):
 *                                          "disk NAME BLOCKDEV SIZE SECTOR PTTYPE WHOLEFS",
 *                                          "part NUMBER START SIZE FSTYPE LABEL UUID
 *                                          PARTTYPE EXTENDED PARTNAME"
 *   plan-tool plan [--all-blocks] PATH     "region KIND PART START SIZE PLANNED NOTE",
 *                                          "extent OFF LEN", then "bytes N extents M"
 *   plan-tool copy [--all-blocks] SRC DST  write only the planned extents of SRC into DST,
 *                                          a sparse file of SRC's size
 *   plan-tool ntfs IMAGE                   imager_ntfs_used over a whole file: "OFF LEN"
 *   plan-tool list                         imager_list_local_disks, one path a line
 * Exit 0, or 1 with the error on stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "imager-int.h"

static int die(const struct p2v_err *e)
{
    fprintf(stderr, "plan-tool: %s\n", e->msg);
    return 1;
}

static int cmd_discover(const char *path)
{
    struct p2v_err e = {0};
    struct imager_disk *d = malloc(sizeof *d);
    struct p2v_buf b = P2V_BUF_INIT;
    struct p2v_json j;
    if (!d)
        return 1;
    if (imager_disk_discover(path, d, &e) < 0) {
        free(d);
        return die(&e);
    }
    p2v_json_init(&j, &b, false);
    p2v_json_object_begin(&j);
    imager_disk_json(d, &j);
    p2v_json_object_end(&j);
    printf("%s\n", p2v_buf_cstr(&b));
    p2v_buf_release(&b);
    free(d);
    return 0;
}

static int cmd_show(const char *path)
{
    struct p2v_err e = {0};
    struct imager_disk *d = malloc(sizeof *d);
    if (!d)
        return 1;
    if (imager_disk_discover(path, d, &e) < 0) {
        free(d);
        return die(&e);
    }
    printf("disk\t%s\t%d\t%llu\t%u\t%s\t%s\n", d->name, d->is_block_device,
           (unsigned long long)d->size, d->sector_size, d->pttype, d->whole_fstype);
    for (int i = 0; i < d->nparts; i++) {
        const struct imager_part *p = &d->parts[i];
        printf("part\t%d\t%llu\t%llu\t%s\t%s\t%s\t%s\t%d\t%s\n", p->number,
               (unsigned long long)p->start, (unsigned long long)p->size, p->fstype, p->label,
               p->uuid, p->part_type, p->extended, p->part_name);
    }
    free(d);
    return 0;
}

static int discover_and_plan(const char *path, bool all, struct imager_disk *d,
                             struct imager_plan *plan)
{
    struct p2v_err e = {0};
    if (imager_disk_discover(path, d, &e) < 0 || imager_plan(d, all, plan, &e) < 0)
        return die(&e);
    return 0;
}

static int cmd_plan(const char *path, bool all)
{
    struct imager_disk *d = malloc(sizeof *d);
    struct imager_plan plan = {0};
    if (!d || discover_and_plan(path, all, d, &plan)) {
        free(d);
        return 1;
    }
    for (size_t i = 0; i < plan.nregions; i++) {
        const struct imager_plan_region *r = &plan.regions[i];
        printf("region %s %d %llu %llu %llu %s\n", imager_region_kind_name(r->kind), r->part,
               (unsigned long long)r->start, (unsigned long long)r->size,
               (unsigned long long)r->planned, r->note);
    }
    for (size_t i = 0; i < plan.count; i++)
        printf("extent %llu %llu\n", (unsigned long long)plan.ext[i].off,
               (unsigned long long)plan.ext[i].len);
    printf("bytes %llu extents %zu\n", (unsigned long long)plan.bytes, plan.count);
    imager_plan_release(&plan);
    free(d);
    return 0;
}

static int cmd_copy(const char *src, const char *dst, bool all)
{
    int ret = 1, in = -1, out = -1;
    struct imager_disk *d = malloc(sizeof *d);
    struct imager_plan plan = {0};
    enum { PIECE = 1 << 20 };
    uint8_t *buf = malloc(PIECE);

    if (!d || !buf || discover_and_plan(src, all, d, &plan))
        goto out;
    if ((in = open(src, O_RDONLY)) < 0 ||
        (out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0 ||
        ftruncate(out, (off_t)d->size) < 0) {
        perror("plan-tool: copy");
        goto out;
    }
    for (size_t i = 0; i < plan.count; i++) {
        for (uint64_t done = 0; done < plan.ext[i].len;) {
            size_t n = (size_t)P2V_MIN((uint64_t)PIECE, plan.ext[i].len - done);
            uint64_t at = plan.ext[i].off + done;
            if (p2v_pread_full(in, buf, n, at) != (ssize_t)n) {
                fprintf(stderr, "plan-tool: short read at %llu\n", (unsigned long long)at);
                goto out;
            }
            if (!p2v_is_zero(buf, n) && p2v_pwrite_full(out, buf, n, at) != (ssize_t)n) {
                perror("plan-tool: write");
                goto out;
            }
            done += n;
        }
    }
    ret = 0;
out:
    if (in >= 0)
        close(in);
    if (out >= 0 && close(out) < 0)
        ret = 1;
    imager_plan_release(&plan);
    free(d);
    free(buf);
    return ret;
}

static int print_range(void *opaque, uint64_t off, uint64_t len)
{
    (void)opaque;
    printf("%llu %llu\n", (unsigned long long)off, (unsigned long long)len);
    return 0;
}

static int cmd_ntfs(const char *path)
{
    struct p2v_err e = {0};
    struct stat st;
    int fd = open(path, O_RDONLY);
    if (fd < 0 || fstat(fd, &st) < 0) {
        perror(path);
        return 1;
    }
    struct imager_fdreader r = {fd, 0, (uint64_t)st.st_size};
    int rc = imager_ntfs_used(imager_fdreader_read, &r, r.size, print_range, NULL, &e);
    close(fd);
    return rc < 0 ? die(&e) : 0;
}

static int cmd_list(void)
{
    struct p2v_err e = {0};
    char **list;
    if (imager_list_local_disks(&list, &e) < 0)
        return die(&e);
    for (char **p = list; *p; p++)
        printf("%s\n", *p);
    imager_free_list(list);
    return 0;
}

int main(int argc, char **argv)
{
    bool all = argc > 2 && strcmp(argv[2], "--all-blocks") == 0;
    int a = all ? 3 : 2; /* first operand */
    if (argc >= 3 && !strcmp(argv[1], "discover"))
        return cmd_discover(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "show"))
        return cmd_show(argv[2]);
    if (argc == a + 1 && !strcmp(argv[1], "plan"))
        return cmd_plan(argv[a], all);
    if (argc == a + 2 && !strcmp(argv[1], "copy"))
        return cmd_copy(argv[a], argv[a + 1], all);
    if (argc == 3 && !strcmp(argv[1], "ntfs"))
        return cmd_ntfs(argv[2]);
    if (argc == 2 && !strcmp(argv[1], "list"))
        return cmd_list();
    fprintf(stderr, "usage: plan-tool discover PATH | show PATH | plan [--all-blocks] PATH |\n"
                    "       copy [--all-blocks] SRC DST | ntfs IMAGE | list\n");
    return 2;
}
