//go:build cgo && linux

#define _GNU_SOURCE
#include "shim.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Implemented in Go (lib.go): receives one formatted VDDK message. */
extern void hsVDDKLog(int level, char *msg);

static void *dl;
static char loaded_path[4096];

static VixDiskLib_InitEx_t p_InitEx;
static VixDiskLib_Exit_t p_Exit;
static VixDiskLib_GetErrorText_t p_GetErrorText;
static VixDiskLib_FreeErrorText_t p_FreeErrorText;
static VixDiskLib_AllocateConnectParams_t p_AllocateConnectParams;
static VixDiskLib_FreeConnectParams_t p_FreeConnectParams;
static VixDiskLib_ConnectEx_t p_ConnectEx;
static VixDiskLib_Disconnect_t p_Disconnect;
static VixDiskLib_Open_t p_Open;
static VixDiskLib_Close_t p_Close;
static VixDiskLib_GetTransportMode_t p_GetTransportMode;
static VixDiskLib_GetInfo_t p_GetInfo;
static VixDiskLib_FreeInfo_t p_FreeInfo;
static VixDiskLib_Read_t p_Read;
static VixDiskLib_QueryAllocatedBlocks_t p_QueryAllocatedBlocks;
static VixDiskLib_FreeBlockList_t p_FreeBlockList;

static char *msgf(const char *fmt, ...) {
  char *s = NULL;
  va_list ap;
  va_start(ap, fmt);
  if (vasprintf(&s, fmt, ap) < 0) s = NULL;
  va_end(ap);
  return s;
}

int hs_load(const char *path, char **err) {
  dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (dl == NULL) {
    const char *e = dlerror();
    *err = msgf("%s", e ? e : "dlopen failed");
    return -1;
  }
  snprintf(loaded_path, sizeof loaded_path, "%s", path);
#define REQUIRED(name)                                                              \
  do {                                                                              \
    *(void **)(&p_##name) = dlsym(dl, "VixDiskLib_" #name);                         \
    if (p_##name == NULL) {                                                         \
      *err = msgf("%s lacks VixDiskLib_" #name " (VDDK 6.5 or later is needed)", path); \
      return -1;                                                                    \
    }                                                                               \
  } while (0)
#define OPTIONAL(name) (*(void **)(&p_##name) = dlsym(dl, "VixDiskLib_" #name))
  REQUIRED(InitEx);
  REQUIRED(Exit);
  REQUIRED(GetErrorText);
  REQUIRED(FreeErrorText);
  REQUIRED(ConnectEx);
  REQUIRED(Disconnect);
  REQUIRED(Open);
  REQUIRED(Close);
  REQUIRED(GetTransportMode);
  REQUIRED(GetInfo);
  REQUIRED(FreeInfo);
  REQUIRED(Read);
  OPTIONAL(AllocateConnectParams);
  OPTIONAL(FreeConnectParams);
  OPTIONAL(QueryAllocatedBlocks);
  OPTIONAL(FreeBlockList);
#undef REQUIRED
#undef OPTIONAL
  if (p_AllocateConnectParams == NULL || p_FreeConnectParams == NULL)
    p_AllocateConnectParams = NULL, p_FreeConnectParams = NULL;
  if (p_QueryAllocatedBlocks == NULL || p_FreeBlockList == NULL)
    p_QueryAllocatedBlocks = NULL, p_FreeBlockList = NULL;
  return 0;
}

int hs_has_query_allocated(void) { return p_QueryAllocatedBlocks != NULL; }
const char *hs_loaded_path(void) { return loaded_path; }

/* VDDK hands printf-style messages with a va_list, which Go cannot take: format here. */
static void emit(int level, const char *fmt, va_list ap) {
  char buf[4096];
  vsnprintf(buf, sizeof buf, fmt, ap);
  hsVDDKLog(level, buf);
}
static void log_info(const char *fmt, va_list ap) { emit(0, fmt, ap); }
static void log_warn(const char *fmt, va_list ap) { emit(1, fmt, ap); }
static void log_panic(const char *fmt, va_list ap) { emit(2, fmt, ap); }

VixError hs_init(uint32_t major, uint32_t minor, const char *libdir) {
  return p_InitEx(major, minor, log_info, log_warn, log_panic, libdir, NULL);
}

void hs_exit(void) { p_Exit(); }

char *hs_error_text(VixError err) {
  char *t = p_GetErrorText(err, NULL);
  char *s = strdup(t ? t : "unknown error");
  if (t) p_FreeErrorText(t);
  return s;
}

VixError hs_connect(hs_conn *c, const char *vmx, const char *server, const char *thumb, const char *user,
                    const char *password, uint32_t port, const char *snapshot, const char *transports) {
  memset(c, 0, sizeof *c);
  if (p_AllocateConnectParams) {
    c->params = p_AllocateConnectParams();
    c->allocated = 1;
  } else {
    c->params = calloc(1, sizeof *c->params);
  }
  if (c->params == NULL) return VIX_E_FAIL;
  VixDiskLibConnectParams *p = c->params;
  p->vmxSpec = strdup(vmx);
  p->serverName = strdup(server);
  p->thumbPrint = thumb && *thumb ? strdup(thumb) : NULL;
  p->credType = VIXDISKLIB_CRED_UID;
  p->creds.uid.userName = strdup(user);
  p->creds.uid.password = strdup(password);
  p->port = port;
  p->specType = VIXDISKLIB_SPEC_VMX;
  VixError e = p_ConnectEx(p, 1, snapshot && *snapshot ? snapshot : NULL, transports && *transports ? transports : NULL,
                           &c->conn);
  if (e != VIX_OK) {
    c->conn = NULL;
    hs_disconnect(c);
  }
  return e;
}

static void free_params(hs_conn *c) {
  VixDiskLibConnectParams *p = c->params;
  if (p == NULL) return;
  if (p->creds.uid.password) {
    explicit_bzero(p->creds.uid.password, strlen(p->creds.uid.password));
    free(p->creds.uid.password);
  }
  free(p->vmxSpec), free(p->serverName), free(p->thumbPrint), free(p->creds.uid.userName);
  /* Our strings are ours: the library must not free them a second time. */
  p->vmxSpec = p->serverName = p->thumbPrint = p->creds.uid.userName = p->creds.uid.password = NULL;
  if (c->allocated)
    p_FreeConnectParams(p);
  else
    free(p);
  c->params = NULL;
}

VixError hs_disconnect(hs_conn *c) {
  VixError e = VIX_OK;
  if (c->conn) e = p_Disconnect(c->conn);
  c->conn = NULL;
  free_params(c);
  return e;
}

VixError hs_open(hs_conn *c, const char *path, VixDiskLibHandle *h) {
  return p_Open(c->conn, path, VIXDISKLIB_FLAG_OPEN_READ_ONLY, h);
}

VixError hs_close(VixDiskLibHandle h) { return p_Close(h); }

const char *hs_transport_mode(VixDiskLibHandle h) { return p_GetTransportMode(h); }

VixError hs_get_info(VixDiskLibHandle h, int version, uint64_t *capacity, uint32_t *logical, uint32_t *physical) {
  VixDiskLibInfo *info = NULL;
  VixError e = p_GetInfo(h, &info);
  if (e != VIX_OK) return e;
  *capacity = info->capacity;
  *logical = *physical = 0;
  if (version >= 7) {
    *logical = info->logicalSectorSize;
    *physical = info->physicalSectorSize;
  }
  p_FreeInfo(info);
  return VIX_OK;
}

VixError hs_read(VixDiskLibHandle h, uint64_t start, uint64_t n, uint8_t *buf) { return p_Read(h, start, n, buf); }

VixError hs_query_allocated(VixDiskLibHandle h, uint64_t start, uint64_t n, uint64_t chunk, uint64_t **out,
                            uint32_t *count) {
  *out = NULL;
  *count = 0;
  if (p_QueryAllocatedBlocks == NULL) return VIX_E_NOT_SUPPORTED;
  VixDiskLibBlockList *l = NULL;
  VixError e = p_QueryAllocatedBlocks(h, start, n, chunk, &l);
  if (e != VIX_OK) return e;
  uint32_t nb = l ? l->numBlocks : 0;
  uint64_t *pairs = malloc((nb ? nb : 1) * 2 * sizeof(uint64_t));
  if (pairs == NULL) {
    if (l) p_FreeBlockList(l);
    return VIX_E_FAIL;
  }
  for (uint32_t i = 0; i < nb; i++) {
    pairs[2 * i] = l->blocks[i].offset;
    pairs[2 * i + 1] = l->blocks[i].length;
  }
  if (l) p_FreeBlockList(l);
  *out = pairs;
  *count = nb;
  return VIX_OK;
}
