/*
 * A fake libvixDiskLib.so.8 for the tests: it serves the simulator's disks from the
 * datastore directories the simulator prints, and behaves like VMware's library where a
 * client can get it wrong: nothing works before InitEx; the thumbprint (checked at Open,
 * where VDDK notices a mismatch) and the password (at ConnectEx) must match the
 * configuration; reads are in whole sectors, within the disk and at most max_read bytes;
 * a handle used by two threads at once, or Open/Close running concurrently, is refused;
 * QueryAllocatedBlocks answers from the extent's real holes. Every call is counted in the
 * stats file so that tests can prove that holes were never read.
 *
 * Build variants: -DFAKE_NO_QUERY_ALLOCATED leaves out QueryAllocatedBlocks and
 * FreeBlockList (a VDDK older than 6.7). Crashes (abort) and transient read failures are
 * configured at run time (crash_after_bytes, crash_once, fail_reads).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fakecore.h"
#include "vixdisklib.h"

#define EXPORT __attribute__((visibility("default")))
#define CONN_MAGIC 0x636f6e6eu
#define HANDLE_MAGIC 0x68646c65u

struct conn {
  unsigned magic;
  char *server, *vmx, *thumb, *user, *snapshot, *transports;
  int read_only;
};

struct handle {
  unsigned magic;
  struct conn *conn;
  struct fake_chain chain; /* the disk and its snapshot parents */
  const char *flat;        /* the extent of the disk opened (chain.extent[0]) */
  uint64_t sectors;
  const char *mode;
  int in_use; /* atomic: a handle serves one thread at a time */
};

static int initialised;
static struct fake_config cfg;
static VixDiskLibGenericLogFunc *log_fn, *warn_fn, *panic_fn;
static pthread_t bg;
static volatile int bg_stop;
static int open_close_busy;    /* atomic */
static uint64_t bytes_read;    /* atomic */
static int reads_failed;       /* atomic */
static int live_conns;         /* atomic */

static void say(VixDiskLibGenericLogFunc *fn, const char *fmt, ...) {
  if (fn == NULL) return;
  va_list ap;
  va_start(ap, fmt);
  fn(fmt, ap);
  va_end(ap);
}

/* Every entry point but InitEx starts here: the real library is unusable before InitEx. */
static int refuse_uninitialised(const char *call) {
  if (initialised) return 0;
  fprintf(stderr, "fake VDDK: %s called before VixDiskLib_InitEx\n", call);
  /* No cfg yet: the stats file is named by the configuration, so load it for this line. */
  struct fake_config c;
  char err[256];
  if (fake_load_config(&c, err, sizeof err) == 0) fake_stat(&c, "call=%s refused=before-InitEx", call);
  return 1;
}

static void *background(void *arg) {
  (void)arg;
  /* VDDK starts threads of its own in InitEx; so does the fake, so that a client that
   * forks after InitEx or ends the process without Exit is exercised as with the real one. */
  while (!bg_stop) usleep(50 * 1000);
  return NULL;
}

EXPORT VixError VixDiskLib_InitEx(uint32_t major, uint32_t minor, VixDiskLibGenericLogFunc *log,
                                  VixDiskLibGenericLogFunc *warn, VixDiskLibGenericLogFunc *panic,
                                  const char *libDir, const char *configFile) {
  (void)configFile;
  if (initialised) {
    say(warn, "VixDiskLib: InitEx called twice in one process\n");
    return VIX_E_FAIL;
  }
  char err[512];
  if (fake_load_config(&cfg, err, sizeof err) < 0) {
    say(warn, "%s\n", err);
    return VIX_E_FAIL;
  }
  if (major < 6) {
    say(warn, "VixDiskLib: API version %u.%u is not supported\n", major, minor);
    return VIX_E_NOT_SUPPORTED;
  }
  log_fn = log, warn_fn = warn, panic_fn = panic;
  bg_stop = 0;
  if (pthread_create(&bg, NULL, background, NULL) != 0) return VIX_E_FAIL;
  initialised = 1;
  say(log_fn, "VixDiskLib: fake VDDK 8.0.3 (HyperSDK tests) initialised, API %u.%u, libdir %s\n", major, minor,
      libDir ? libDir : "(null)");
  fake_stat(&cfg, "call=InitEx major=%u minor=%u", major, minor);
  return VIX_OK;
}

EXPORT void VixDiskLib_Exit(void) {
  if (refuse_uninitialised("Exit")) return;
  int open = __atomic_load_n(&live_conns, __ATOMIC_SEQ_CST);
  if (open > 0) say(warn_fn, "VixDiskLib: Exit with %d connection(s) still open\n", open);
  fake_stat(&cfg, "call=Exit open_connections=%d bytes_read=%llu", open,
            (unsigned long long)__atomic_load_n(&bytes_read, __ATOMIC_SEQ_CST));
  bg_stop = 1;
  pthread_join(bg, NULL);
  initialised = 0;
}

static const char *error_text(VixError e) {
  switch (VIX_ERROR_CODE(e)) {
  case VIX_OK: return "The operation was successful";
  case VIX_E_FAIL: return "Unknown error";
  case VIX_E_INVALID_ARG: return "One of the parameters was invalid";
  case VIX_E_FILE_NOT_FOUND: return "The file was not found";
  case VIX_E_OBJECT_IS_BUSY: return "The object is busy";
  case VIX_E_NOT_SUPPORTED: return "The operation is not supported";
  case VIX_E_AUTHENTICATION_FAIL: return "Authentication failure";
  case VIX_E_HOST_CONNECTION_LOST: return "The connection to the host was lost";
  }
  return "Unknown error";
}

EXPORT char *VixDiskLib_GetErrorText(VixError err, const char *locale) {
  (void)locale;
  return strdup(error_text(err));
}

EXPORT void VixDiskLib_FreeErrorText(char *text) { free(text); }

EXPORT VixDiskLibConnectParams *VixDiskLib_AllocateConnectParams(void) {
  return calloc(1, sizeof(VixDiskLibConnectParams));
}

EXPORT void VixDiskLib_FreeConnectParams(VixDiskLibConnectParams *p) { free(p); }

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static void free_conn(struct conn *c) {
  c->magic = 0;
  free(c->server), free(c->vmx), free(c->thumb), free(c->user), free(c->snapshot), free(c->transports);
  free(c);
}

EXPORT VixError VixDiskLib_ConnectEx(const VixDiskLibConnectParams *p, char readOnly, const char *snapshotRef,
                                     const char *transportModes, VixDiskLibConnection *out) {
  if (refuse_uninitialised("ConnectEx")) return VIX_E_FAIL;
  if (p == NULL || out == NULL || p->serverName == NULL || p->vmxSpec == NULL ||
      p->credType != VIXDISKLIB_CRED_UID || p->creds.uid.userName == NULL || p->creds.uid.password == NULL) {
    say(warn_fn, "VixDiskLib: ConnectEx: server, vmxSpec and user/password credentials are required\n");
    return VIX_E_INVALID_ARG;
  }
  if (strncmp(p->vmxSpec, "moref=", 6) != 0) {
    say(warn_fn, "VixDiskLib: ConnectEx: vmxSpec %s is not moref=<id>\n", p->vmxSpec);
    return VIX_E_INVALID_ARG;
  }
  /* A library that writes the password into its own log: the client must scrub it. */
  say(log_fn, "VixDiskLibVim: Login to %s:%u as %s password=%s\n", p->serverName, p->port, p->creds.uid.userName,
      p->creds.uid.password);
  if ((cfg.user[0] && strcmp(cfg.user, p->creds.uid.userName) != 0) ||
      strcmp(cfg.password, p->creds.uid.password) != 0) {
    say(warn_fn, "VixDiskLibVim: Login failed: Cannot complete login due to an incorrect user name or password.\n");
    fake_stat(&cfg, "call=ConnectEx result=auth-failed user=%s", p->creds.uid.userName);
    return VIX_E_AUTHENTICATION_FAIL;
  }
  struct conn *c = calloc(1, sizeof *c);
  if (c == NULL) return VIX_E_FAIL;
  c->magic = CONN_MAGIC;
  c->server = dup_or_null(p->serverName);
  c->vmx = dup_or_null(p->vmxSpec);
  c->thumb = dup_or_null(p->thumbPrint);
  c->user = dup_or_null(p->creds.uid.userName);
  c->snapshot = dup_or_null(snapshotRef);
  c->transports = dup_or_null(transportModes);
  c->read_only = readOnly != 0;
  __atomic_add_fetch(&live_conns, 1, __ATOMIC_SEQ_CST);
  fake_stat(&cfg, "call=ConnectEx server=%s port=%u vmx=%s snapshot=%s transports=%s read_only=%d", c->server,
            p->port, c->vmx, c->snapshot ? c->snapshot : "-", c->transports ? c->transports : "-", c->read_only);
  *out = c;
  return VIX_OK;
}

EXPORT VixError VixDiskLib_Disconnect(VixDiskLibConnection connection) {
  if (refuse_uninitialised("Disconnect")) return VIX_E_FAIL;
  struct conn *c = connection;
  if (c == NULL || c->magic != CONN_MAGIC) return VIX_E_INVALID_ARG;
  free_conn(c);
  __atomic_sub_fetch(&live_conns, 1, __ATOMIC_SEQ_CST);
  fake_stat(&cfg, "call=Disconnect");
  return VIX_OK;
}

/* The first mode of the client's list that this "host" offers, or NULL. */
static const char *pick_mode(const char *wanted) {
  static const char *known[] = {"nbdssl", "nbd", "hotadd", "san", "file", NULL};
  char list[256];
  snprintf(list, sizeof list, "%s", wanted && *wanted ? wanted : "nbdssl:nbd");
  char *save = NULL;
  for (char *m = strtok_r(list, ":", &save); m; m = strtok_r(NULL, ":", &save)) {
    char offered[256];
    snprintf(offered, sizeof offered, "%s", cfg.transports);
    char *s2 = NULL;
    for (char *o = strtok_r(offered, ":", &s2); o; o = strtok_r(NULL, ":", &s2))
      if (strcmp(o, m) == 0)
        for (int i = 0; known[i]; i++)
          if (strcmp(known[i], m) == 0) return known[i];
  }
  return NULL;
}

static int enter(int *flag) { return __atomic_exchange_n(flag, 1, __ATOMIC_SEQ_CST) == 0; }
static void leave(int *flag) { __atomic_store_n(flag, 0, __ATOMIC_SEQ_CST); }

EXPORT VixError VixDiskLib_Open(const VixDiskLibConnection connection, const char *path, uint32_t flags,
                                VixDiskLibHandle *out) {
  if (refuse_uninitialised("Open")) return VIX_E_FAIL;
  struct conn *c = connection;
  if (c == NULL || c->magic != CONN_MAGIC || path == NULL || out == NULL) return VIX_E_INVALID_ARG;
  if (!enter(&open_close_busy)) {
    say(panic_fn, "VixDiskLib: Open called while another Open or Close runs (serialise them)\n");
    fake_stat(&cfg, "call=Open refused=concurrent-open-close");
    return VIX_E_OBJECT_IS_BUSY;
  }
  VixError rc = VIX_OK;
  struct handle *h = NULL;
  /* VDDK verifies the server certificate when it opens the disk, and then says only
   * "Unknown error"; the detail is in its log. */
  if (c->thumb == NULL || strcasecmp(c->thumb, cfg.thumbprint) != 0) {
    say(log_fn, "VixDiskLibVim: Failed to verify SSL certificate: actual thumbprint=%s expected=%s\n", cfg.thumbprint,
        c->thumb ? c->thumb : "(none)");
    fake_stat(&cfg, "call=Open result=thumbprint-mismatch");
    rc = VIX_E_FAIL;
    goto out;
  }
  const char *mode = pick_mode(c->transports);
  if (mode == NULL) {
    say(warn_fn, "VixDiskLib: Cannot use any of the transport modes %s to access %s (this host offers %s)\n",
        c->transports, path, cfg.transports);
    fake_stat(&cfg, "call=Open result=no-transport transports=%s", c->transports ? c->transports : "-");
    rc = VIX_E_NOT_SUPPORTED;
    goto out;
  }
  if (!(flags & VIXDISKLIB_FLAG_OPEN_READ_ONLY) && !c->read_only) {
    say(warn_fn, "VixDiskLib: Open %s read-write: the fake is read-only\n", path);
    rc = VIX_E_NOT_SUPPORTED;
    goto out;
  }
  h = calloc(1, sizeof *h);
  if (h == NULL) {
    rc = VIX_E_FAIL;
    goto out;
  }
  char err[512];
  if (fake_open_chain(&cfg, path, &h->chain, &h->sectors, err, sizeof err) < 0) {
    say(warn_fn, "VixDiskLib: Open: %s\n", err);
    fake_stat(&cfg, "call=Open result=not-found path=%s", path);
    free(h);
    h = NULL;
    rc = VIX_E_FILE_NOT_FOUND;
    goto out;
  }
  h->flat = h->chain.extent[0];
  h->magic = HANDLE_MAGIC;
  h->conn = c;
  h->mode = mode;
  fake_stat(&cfg, "call=Open path=%s flat=%s chain=%d snapshot=%s flags=%u mode=%s", path, h->flat, h->chain.n,
            c->snapshot ? c->snapshot : "-", flags, mode);
  *out = h;
out:
  leave(&open_close_busy);
  return rc;
}

EXPORT VixError VixDiskLib_Close(VixDiskLibHandle handle) {
  if (refuse_uninitialised("Close")) return VIX_E_FAIL;
  struct handle *h = handle;
  if (h == NULL || h->magic != HANDLE_MAGIC) return VIX_E_INVALID_ARG;
  if (!enter(&open_close_busy)) {
    say(panic_fn, "VixDiskLib: Close called while another Open or Close runs (serialise them)\n");
    fake_stat(&cfg, "call=Close refused=concurrent-open-close");
    return VIX_E_OBJECT_IS_BUSY;
  }
  fake_close_chain(&h->chain);
  h->magic = 0;
  free(h);
  fake_stat(&cfg, "call=Close");
  leave(&open_close_busy);
  return VIX_OK;
}

EXPORT const char *VixDiskLib_GetTransportMode(VixDiskLibHandle handle) {
  if (refuse_uninitialised("GetTransportMode")) return NULL;
  struct handle *h = handle;
  return h && h->magic == HANDLE_MAGIC ? h->mode : NULL;
}

EXPORT VixError VixDiskLib_GetInfo(VixDiskLibHandle handle, VixDiskLibInfo **info) {
  if (refuse_uninitialised("GetInfo")) return VIX_E_FAIL;
  struct handle *h = handle;
  if (h == NULL || h->magic != HANDLE_MAGIC || info == NULL) return VIX_E_INVALID_ARG;
  VixDiskLibInfo *i = calloc(1, sizeof *i);
  if (i == NULL) return VIX_E_FAIL;
  i->capacity = h->sectors;
  i->adapterType = 3;
  i->numLinks = 1;
  i->logicalSectorSize = 512;
  i->physicalSectorSize = 512;
  fake_stat(&cfg, "call=GetInfo capacity=%llu", (unsigned long long)h->sectors);
  *info = i;
  return VIX_OK;
}

EXPORT void VixDiskLib_FreeInfo(VixDiskLibInfo *info) { free(info); }

static void maybe_crash(uint64_t total) {
  if (cfg.crash_after_bytes == 0 || total < cfg.crash_after_bytes) return;
  if (cfg.crash_once[0]) {
    int fd = open(cfg.crash_once, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) return; /* crashed once already */
    close(fd);
  }
  fake_stat(&cfg, "call=Read crash=abort after_bytes=%llu", (unsigned long long)total);
  say(panic_fn, "VixDiskLib: NfcFssrvr: fatal error in the fake library (configured crash)\n");
  fprintf(stderr, "fake VDDK: aborting after %llu bytes as configured\n", (unsigned long long)total);
  abort();
}

EXPORT VixError VixDiskLib_Read(VixDiskLibHandle handle, uint64_t start, uint64_t n, uint8_t *buf) {
  if (refuse_uninitialised("Read")) return VIX_E_FAIL;
  struct handle *h = handle;
  if (h == NULL || h->magic != HANDLE_MAGIC || buf == NULL) return VIX_E_INVALID_ARG;
  if (!enter(&h->in_use)) {
    say(panic_fn, "VixDiskLib: a disk handle is used by two threads at once\n");
    fake_stat(&cfg, "call=Read refused=concurrent-handle");
    return VIX_E_OBJECT_IS_BUSY;
  }
  VixError rc = VIX_OK;
  uint64_t len = n * VIXDISKLIB_SECTOR_SIZE;
  if (n == 0 || start + n > h->sectors || start + n < start) {
    say(warn_fn, "VixDiskLib: Read of sectors [%llu, +%llu) outside the disk of %llu sectors\n",
        (unsigned long long)start, (unsigned long long)n, (unsigned long long)h->sectors);
    fake_stat(&cfg, "call=Read refused=out-of-range start=%llu sectors=%llu", (unsigned long long)start,
              (unsigned long long)n);
    rc = VIX_E_INVALID_ARG;
    goto out;
  }
  if (len > cfg.max_read) {
    say(warn_fn, "VixDiskLib: Read of %llu bytes exceeds the %llu-byte maximum per call\n", (unsigned long long)len,
        (unsigned long long)cfg.max_read);
    fake_stat(&cfg, "call=Read refused=oversize len=%llu", (unsigned long long)len);
    rc = VIX_E_INVALID_ARG;
    goto out;
  }
  if (cfg.read_delay_ms) usleep(cfg.read_delay_ms * 1000);
  if (__atomic_add_fetch(&reads_failed, 1, __ATOMIC_SEQ_CST) <= cfg.fail_reads) {
    say(warn_fn, "VixDiskLib: NBD_ClientRead: connection to the host lost (configured failure)\n");
    fake_stat(&cfg, "call=Read result=failed off=%llu len=%llu", (unsigned long long)(start * 512),
              (unsigned long long)len);
    rc = VIX_E_HOST_CONNECTION_LOST;
    goto out;
  }
  if (fake_read_chain(&h->chain, buf, len, start * VIXDISKLIB_SECTOR_SIZE) < 0) {
    rc = VIX_E_FAIL;
    goto out;
  }
  uint64_t total = __atomic_add_fetch(&bytes_read, len, __ATOMIC_SEQ_CST);
  fake_stat(&cfg, "call=Read flat=%s off=%llu len=%llu", h->flat, (unsigned long long)(start * 512),
            (unsigned long long)len);
  maybe_crash(total);
out:
  leave(&h->in_use);
  return rc;
}

#ifndef FAKE_NO_QUERY_ALLOCATED
EXPORT VixError VixDiskLib_QueryAllocatedBlocks(VixDiskLibHandle handle, uint64_t start, uint64_t n, uint64_t chunk,
                                                VixDiskLibBlockList **list) {
  if (refuse_uninitialised("QueryAllocatedBlocks")) return VIX_E_FAIL;
  struct handle *h = handle;
  if (h == NULL || h->magic != HANDLE_MAGIC || list == NULL) return VIX_E_INVALID_ARG;
  if (chunk < VIXDISKLIB_MIN_CHUNK_SIZE || start % chunk || n % chunk || n == 0 ||
      n / chunk > VIXDISKLIB_MAX_CHUNK_NUMBER) {
    say(warn_fn, "VixDiskLib: QueryAllocatedBlocks: start %llu, %llu sectors, chunk %llu: want whole chunks of at "
                 "least %d sectors, at most %d chunks\n",
        (unsigned long long)start, (unsigned long long)n, (unsigned long long)chunk, VIXDISKLIB_MIN_CHUNK_SIZE,
        VIXDISKLIB_MAX_CHUNK_NUMBER);
    fake_stat(&cfg, "call=QueryAllocatedBlocks refused=misaligned");
    return VIX_E_INVALID_ARG;
  }
  if (!enter(&h->in_use)) {
    fake_stat(&cfg, "call=QueryAllocatedBlocks refused=concurrent-handle");
    return VIX_E_OBJECT_IS_BUSY;
  }
  VixDiskLibBlock *b = NULL;
  uint32_t count = 0;
  VixError rc = VIX_OK;
  if (fake_allocated_chain(&h->chain, start, start + n, chunk, h->sectors, &b, &count) < 0) {
    rc = VIX_E_FAIL;
    goto out;
  }
  VixDiskLibBlockList *l = malloc(sizeof *l + (count ? count - 1 : 0) * sizeof(VixDiskLibBlock));
  if (l == NULL) {
    free(b);
    rc = VIX_E_FAIL;
    goto out;
  }
  l->numBlocks = count;
  memcpy(l->blocks, b, count * sizeof *b);
  free(b);
  fake_stat(&cfg, "call=QueryAllocatedBlocks flat=%s start=%llu sectors=%llu blocks=%u", h->flat,
            (unsigned long long)start, (unsigned long long)n, count);
  *list = l;
out:
  leave(&h->in_use);
  return rc;
}

EXPORT VixError VixDiskLib_FreeBlockList(VixDiskLibBlockList *list) {
  free(list);
  return VIX_OK;
}
#endif

/* Compile-time check that the fake has the signatures the client looks up. */
static __attribute__((unused)) VixDiskLib_InitEx_t check_init = VixDiskLib_InitEx;
static __attribute__((unused)) VixDiskLib_ConnectEx_t check_connect = VixDiskLib_ConnectEx;
static __attribute__((unused)) VixDiskLib_Open_t check_open = VixDiskLib_Open;
static __attribute__((unused)) VixDiskLib_Read_t check_read = VixDiskLib_Read;
static __attribute__((unused)) VixDiskLib_GetInfo_t check_info = VixDiskLib_GetInfo;
static __attribute__((unused)) VixDiskLib_GetErrorText_t check_text = VixDiskLib_GetErrorText;
#ifndef FAKE_NO_QUERY_ALLOCATED
static __attribute__((unused)) VixDiskLib_QueryAllocatedBlocks_t check_qab = VixDiskLib_QueryAllocatedBlocks;
#endif
