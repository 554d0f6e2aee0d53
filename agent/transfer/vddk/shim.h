/* The C side of the binding: VixDiskLib is reached only through function pointers found
 * with dlsym, so the agent links against libdl, never against VDDK. */
#ifndef HYPERSDK_VDDK_SHIM_H
#define HYPERSDK_VDDK_SHIM_H

#include <stdint.h>

#include "vixdisklib.h"

/* Loads path (RTLD_NOW|RTLD_LOCAL) and resolves the symbols. Returns 0, or -1 with a
 * malloc'd message in *err. */
int hs_load(const char *path, char **err);
int hs_has_query_allocated(void);
const char *hs_loaded_path(void);

VixError hs_init(uint32_t major, uint32_t minor, const char *libdir);
void hs_exit(void);
/* malloc'd copy of VDDK's text for err. */
char *hs_error_text(VixError err);

/* ConnectEx with user/password credentials. The parameters are kept until hs_disconnect
 * (VDDK may keep pointers into them), and the password copy is wiped there. */
typedef struct hs_conn {
  VixDiskLibConnection conn;
  VixDiskLibConnectParams *params;
  int allocated; /* params from AllocateConnectParams (else calloc) */
} hs_conn;

VixError hs_connect(hs_conn *c, const char *vmx, const char *server, const char *thumb, const char *user,
                    const char *password, uint32_t port, const char *snapshot, const char *transports);
VixError hs_disconnect(hs_conn *c);

VixError hs_open(hs_conn *c, const char *path, VixDiskLibHandle *h);
VixError hs_close(VixDiskLibHandle h);
const char *hs_transport_mode(VixDiskLibHandle h);
/* capacity in sectors; sector sizes only from a 7.0+ library (0 otherwise). */
VixError hs_get_info(VixDiskLibHandle h, int version, uint64_t *capacity, uint32_t *logical, uint32_t *physical);
VixError hs_read(VixDiskLibHandle h, uint64_t start, uint64_t n, uint8_t *buf);
/* Allocated blocks of [start, start+n) sectors as pairs (offset, length) in sectors,
 * malloc'd into *out. */
VixError hs_query_allocated(VixDiskLibHandle h, uint64_t start, uint64_t n, uint64_t chunk, uint64_t **out,
                            uint32_t *count);

#endif
