/* bootcfg-int.h: between bootcfg.c (partition tables, the search for a configuration) and
 * ext2io.c (read-only ext2/3/4 access through libext2fs over a partition window of a
 * libdiskfmt image). */
#ifndef VMM_BOOTCFG_INT_H
#define VMM_BOOTCFG_INT_H

#include <stddef.h>
#include <stdint.h>

#include "p2v-common.h"

struct diskfmt;
struct vmm_ext2;

/* Open the ext2/3/4 file system in [off, off + size) of @img, read-only. @img must stay
 * open until vmm_ext2_close() and must not be used by another thread meanwhile. */
struct vmm_ext2 *vmm_ext2_open(struct diskfmt *img, uint64_t off, uint64_t size,
                               struct p2v_err *err);
void vmm_ext2_close(struct vmm_ext2 *fs);
/* The file system's UUID, lower case "xxxxxxxx-xxxx-...". */
const char *vmm_ext2_uuid(const struct vmm_ext2 *fs);

/* Read the regular file at the absolute @path (symbolic links followed, in the path and
 * at its end, relative to this file system's root). More than @cap bytes is an error
 * (EFBIG) naming the file and its size; a missing file fails with code ENOENT. On success
 * *@data (malloc'd, may be NULL for 0 bytes) and *@len, and when @resolved is not NULL the
 * path after following the links (malloc'd). */
int vmm_ext2_read_file(struct vmm_ext2 *fs, const char *path, size_t cap, uint8_t **data,
                       size_t *len, char **resolved, struct p2v_err *err);

#endif
