/*
 * libfakevddkcore.so: the second library of the fake VDDK. libvixDiskLib.so.8 links
 * against it without an rpath, as VMware's library links against its siblings in lib64,
 * so the fake loads only with LD_LIBRARY_PATH pointing at lib64, like the real one.
 * It holds what is not VixDiskLib API: the configuration, the datastore map, the
 * statistics file and the allocation map of a flat extent.
 */
#ifndef FAKECORE_H
#define FAKECORE_H

#include <stddef.h>
#include <stdint.h>

#include "vixdisklib.h"

#define FAKE_ENV "HYPERSDK_FAKE_VDDK"
#define FAKE_MAX_DS 16
#define FAKE_MAX_CHAIN 32
/* The grain of the simulator's delta disks: a delta holds whole grains only. */
#define FAKE_GRAIN (64 * 1024)

struct fake_config {
  char thumbprint[128];
  char user[256];
  char password[256];
  char stats[4096];
  uint64_t max_read;           /* bytes per Read call; larger reads are refused */
  unsigned read_delay_ms;      /* sleep per Read call (slow source for cancel tests) */
  uint64_t crash_after_bytes;  /* abort() once this process has read this much (0: never) */
  char crash_once[4096];       /* with crash_after_bytes: crash only if this file is absent */
  int fail_reads;              /* the first N Read calls of each process fail (transient) */
  char transports[256];        /* modes this "host" offers, colon-separated */
  int n_ds;
  struct { char name[256]; char path[4096]; } ds[FAKE_MAX_DS];
};

/* Reads the file named by $HYPERSDK_FAKE_VDDK. Returns 0, or -1 with err set. */
int fake_load_config(struct fake_config *c, char *err, size_t errlen);

/* Appends one line "pid=N <formatted>" to the stats file (if configured). */
void fake_stat(const struct fake_config *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A disk and its snapshot parents, as the simulator keeps them: [0] is the disk opened,
 * [n-1] the base disk (a flat extent). A delta's extent is a sparse file of the disk's size
 * whose allocated grains are the grains it holds; the others come from its parent. */
struct fake_chain {
  int n;
  int fd[FAKE_MAX_CHAIN];
  int delta[FAKE_MAX_CHAIN];
  char extent[FAKE_MAX_CHAIN][4096];
};

/* Maps "[DS] dir/disk.vmdk" through the datastore map and the text descriptors (following
 * parentFileNameHint of snapshot deltas down to the base disk) to its extents, opened
 * read-only; sets *sectors to the disk's size. Returns 0 or -1 with err set. */
int fake_open_chain(const struct fake_config *c, const char *dspath, struct fake_chain *ch, uint64_t *sectors,
                    char *err, size_t errlen);
void fake_close_chain(struct fake_chain *ch);

/* Reads len bytes at off as the chain shows them. Returns 0, or -1 (errno). */
int fake_read_chain(const struct fake_chain *ch, uint8_t *buf, uint64_t len, uint64_t off);

/* fake_allocated over a chain: the union of what each of its files holds. */
int fake_allocated_chain(const struct fake_chain *ch, uint64_t start, uint64_t end, uint64_t chunk, uint64_t limit,
                         VixDiskLibBlock **out, uint32_t *n);

/* Lists the chunks of [start, end) sectors holding data (SEEK_DATA/SEEK_HOLE), merged into
 * runs of whole chunks. *out is malloc'd. Returns 0 or -1 (errno). */
int fake_allocated(int fd, uint64_t start, uint64_t end, uint64_t chunk, uint64_t limit, VixDiskLibBlock **out,
                   uint32_t *n);

#endif
