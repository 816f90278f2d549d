/* bootcfg-int.h: between bootcfg.c (partition tables, the search for a configuration) and
 * the file system readers over a partition window of a libdiskfmt image, both read-only:
 * ext2io.c (ext2/3/4 through libext2fs) and fatio.c (FAT12/16/32, our own reader). */
#ifndef VMM_BOOTCFG_INT_H
#define VMM_BOOTCFG_INT_H

#include <stddef.h>
#include <stdint.h>

#include "p2v-common.h"

struct diskfmt;
struct vmm_ext2;
struct vmm_fat;

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

/* Open the FAT12/16/32 file system in [off, off + size) of @img, read-only; its boot
 * sector is checked (sector and cluster sizes, counts, every area inside the window). The
 * same rules for @img as vmm_ext2_open(). */
struct vmm_fat *vmm_fat_open(struct diskfmt *img, uint64_t off, uint64_t size,
                             struct p2v_err *err);
void vmm_fat_close(struct vmm_fat *fs);
/* The volume id, upper case "ABCD-1234" (as grub's `search --fs-uuid` writes it), or ""
 * when the boot sector has none. */
const char *vmm_fat_uuid(const struct vmm_fat *fs);
/* 12, 16 or 32. */
unsigned vmm_fat_bits(const struct vmm_fat *fs);

/* Read the file at the absolute @path, looked up case-insensitively by long (VFAT) or short
 * (8.3) name; "." and ".." are resolved in the text. More than @cap bytes is an error
 * (EFBIG) naming the file and its size; a missing file (or a missing or non-directory
 * component) fails with code ENOENT; a corrupt file system (a cluster chain that loops,
 * leaves the cluster count or disagrees with the file's size) with EINVAL naming what is
 * wrong. On success *@data (malloc'd, NULL for 0 bytes) and *@len. */
int vmm_fat_read_file(struct vmm_fat *fs, const char *path, size_t cap, uint8_t **data,
                      size_t *len, struct p2v_err *err);

/* One entry of a directory listing. */
struct vmm_fat_dirent {
    char *name; /* the long name (UTF-8) when there is one, else the 8.3 name */
    bool dir;
    uint64_t size;
};
/* The entries of the directory at @path ("." and ".." and volume labels left out), in
 * their on-disk order: *@ents (free with vmm_fat_dirents_free) and *@n. Errors as for
 * vmm_fat_read_file; ENOTDIR when @path is a file. */
int vmm_fat_list(struct vmm_fat *fs, const char *path, struct vmm_fat_dirent **ents,
                 size_t *n, struct p2v_err *err);
void vmm_fat_dirents_free(struct vmm_fat_dirent *ents, size_t n);

#endif
