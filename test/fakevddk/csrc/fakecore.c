#define _GNU_SOURCE
#include "fakecore.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static void copy(char *dst, size_t n, const char *src) {
  snprintf(dst, n, "%s", src);
}

static char *trim(char *s) {
  while (isspace((unsigned char)*s)) s++;
  char *e = s + strlen(s);
  while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
  return s;
}

int fake_load_config(struct fake_config *c, char *err, size_t errlen) {
  memset(c, 0, sizeof *c);
  c->max_read = 2 << 20;
  copy(c->transports, sizeof c->transports, "nbdssl:nbd");
  const char *path = getenv(FAKE_ENV);
  if (path == NULL || *path == 0) {
    set_err(err, errlen, "fake VDDK: $%s is not set (it names the fake's configuration file)", FAKE_ENV);
    return -1;
  }
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    set_err(err, errlen, "fake VDDK: %s: %s", path, strerror(errno));
    return -1;
  }
  char line[8192];
  while (fgets(line, sizeof line, f) != NULL) {
    char *l = trim(line);
    if (*l == 0 || *l == '#') continue;
    char *eq = strchr(l, '=');
    if (eq == NULL) continue;
    *eq = 0;
    const char *key = l, *val = eq + 1;
    if (strcmp(key, "datastore") == 0) {
      /* The simulator's own line: "datastore=NAME path=DIR". */
      char *p = strstr(val, " path=");
      if (p == NULL || c->n_ds == FAKE_MAX_DS) continue;
      *p = 0;
      copy(c->ds[c->n_ds].name, sizeof c->ds[0].name, val);
      copy(c->ds[c->n_ds].path, sizeof c->ds[0].path, p + 6);
      c->n_ds++;
    } else if (strcmp(key, "thumbprint") == 0) {
      copy(c->thumbprint, sizeof c->thumbprint, val);
    } else if (strcmp(key, "user") == 0) {
      copy(c->user, sizeof c->user, val);
    } else if (strcmp(key, "password") == 0) {
      copy(c->password, sizeof c->password, val);
    } else if (strcmp(key, "stats") == 0) {
      copy(c->stats, sizeof c->stats, val);
    } else if (strcmp(key, "max_read") == 0) {
      c->max_read = strtoull(val, NULL, 10);
    } else if (strcmp(key, "read_delay_ms") == 0) {
      c->read_delay_ms = (unsigned)strtoul(val, NULL, 10);
    } else if (strcmp(key, "crash_after_bytes") == 0) {
      c->crash_after_bytes = strtoull(val, NULL, 10);
    } else if (strcmp(key, "crash_once") == 0) {
      copy(c->crash_once, sizeof c->crash_once, val);
    } else if (strcmp(key, "fail_reads") == 0) {
      c->fail_reads = atoi(val);
    } else if (strcmp(key, "transports") == 0) {
      copy(c->transports, sizeof c->transports, val);
    }
  }
  fclose(f);
  return 0;
}

/* The stats file stays open and the pid is read once: a Read costs the fake one write
 * here, not open, getpid, write and close (system calls are what a delta of many small
 * reads spends its time on, and the fake stands for a library that keeps no such log). */
static int stats_fd = -1;
static int stats_pid;

static int stats_open(const struct fake_config *c) {
  int fd = __atomic_load_n(&stats_fd, __ATOMIC_ACQUIRE);
  if (fd >= 0) return fd;
  fd = open(c->stats, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  __atomic_store_n(&stats_pid, (int)getpid(), __ATOMIC_RELAXED);
  int none = -1;
  if (!__atomic_compare_exchange_n(&stats_fd, &none, fd, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    close(fd); /* another thread opened it first */
    fd = none;
  }
  return fd;
}

void fake_stat(const struct fake_config *c, const char *fmt, ...) {
  if (c->stats[0] == 0) return;
  int fd = stats_open(c);
  if (fd < 0) return;
  char line[8192];
  int n = snprintf(line, sizeof line, "pid=%d ", __atomic_load_n(&stats_pid, __ATOMIC_RELAXED));
  va_list ap;
  va_start(ap, fmt);
  n += vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
  va_end(ap);
  if (n > (int)sizeof line - 2) n = sizeof line - 2;
  line[n++] = '\n';
  /* One write with O_APPEND: lines of concurrent readers never interleave. */
  ssize_t w = write(fd, line, n);
  (void)w;
}

/* parse_descriptor reads one text descriptor: its single extent (file name, kind, size in
 * sectors) and the parent hint of a snapshot delta ("" for a base disk). */
static int parse_descriptor(const char *desc, char *file, size_t filelen, char *kind, size_t kindlen, char *parent,
                            size_t parentlen, uint64_t *sectors, char *err, size_t errlen) {
  FILE *f = fopen(desc, "r");
  if (f == NULL) {
    set_err(err, errlen, "%s: %s", desc, strerror(errno));
    return -1;
  }
  char line[4096];
  int found = 0;
  parent[0] = 0;
  while (fgets(line, sizeof line, f) != NULL) {
    unsigned long long n;
    char k[32], name[2048];
    if (sscanf(line, "RW %llu %31s \"%2047[^\"]\"", &n, k, name) == 3) {
      if (found) {
        fclose(f);
        set_err(err, errlen, "%s: more than one extent (the fake serves one)", desc);
        return -1;
      }
      found = 1;
      *sectors = n;
      copy(file, filelen, name);
      copy(kind, kindlen, k);
    } else if (sscanf(line, "parentFileNameHint=\"%2047[^\"]\"", name) == 1) {
      copy(parent, parentlen, name);
    }
  }
  fclose(f);
  if (!found) {
    set_err(err, errlen, "%s: no extent line in the descriptor", desc);
    return -1;
  }
  return 0;
}

static void dir_join(char *out, size_t n, const char *path_in_dir, const char *name) {
  if (name[0] == '/') {
    copy(out, n, name);
    return;
  }
  const char *slash = strrchr(path_in_dir, '/');
  snprintf(out, n, "%.*s/%s", (int)(slash - path_in_dir), path_in_dir, name);
}

int fake_open_chain(const struct fake_config *c, const char *dspath, struct fake_chain *ch, uint64_t *sectors,
                    char *err, size_t errlen) {
  ch->n = 0;
  /* "[LocalDS_0] vm-1/vm-1.vmdk" */
  const char *close_br = dspath[0] == '[' ? strchr(dspath, ']') : NULL;
  if (close_br == NULL) {
    set_err(err, errlen, "not a datastore path: %s", dspath);
    return -1;
  }
  char name[256];
  snprintf(name, sizeof name, "%.*s", (int)(close_br - dspath - 1), dspath + 1);
  const char *rel = close_br + 1;
  while (*rel == ' ') rel++;
  const char *dir = NULL;
  for (int i = 0; i < c->n_ds; i++)
    if (strcmp(c->ds[i].name, name) == 0) dir = c->ds[i].path;
  if (dir == NULL) {
    set_err(err, errlen, "datastore %s not found", name);
    return -1;
  }
  char desc[4096];
  snprintf(desc, sizeof desc, "%s/%s", dir, rel);
  for (;;) {
    if (ch->n == FAKE_MAX_CHAIN) {
      set_err(err, errlen, "%s: more than %d snapshot levels", dspath, FAKE_MAX_CHAIN);
      goto fail;
    }
    char file[2048], kind[32], parent[2048];
    uint64_t n;
    if (parse_descriptor(desc, file, sizeof file, kind, sizeof kind, parent, sizeof parent, &n, err, errlen) < 0)
      goto fail;
    if (ch->n == 0) *sectors = n;
    int i = ch->n;
    dir_join(ch->extent[i], sizeof ch->extent[i], desc, file);
    ch->delta[i] = strcmp(kind, "VMFSSPARSE") == 0;
    if (ch->delta[i] != (parent[0] != 0)) {
      set_err(err, errlen, "%s: a %s extent %s a parent", desc, kind, parent[0] ? "with" : "without");
      goto fail;
    }
    ch->fd[i] = open(ch->extent[i], O_RDONLY | O_CLOEXEC);
    if (ch->fd[i] < 0) {
      set_err(err, errlen, "%s: %s", ch->extent[i], strerror(errno));
      goto fail;
    }
    ch->n++;
    if (!ch->delta[i]) return 0;
    char next[4096];
    dir_join(next, sizeof next, desc, parent);
    copy(desc, sizeof desc, next);
  }
fail:
  fake_close_chain(ch);
  return -1;
}

void fake_close_chain(struct fake_chain *ch) {
  for (int i = 0; i < ch->n; i++) close(ch->fd[i]);
  ch->n = 0;
}

/* holds reports whether file i of the chain holds the grain at off (a base holds all). */
static int holds(const struct fake_chain *ch, int i, uint64_t grain_off) {
  if (!ch->delta[i]) return 1;
  off_t d = lseek(ch->fd[i], (off_t)grain_off, SEEK_DATA);
  if (d < 0) return errno == ENXIO ? 0 : -1;
  return (uint64_t)d == grain_off;
}

int fake_read_chain(const struct fake_chain *ch, uint8_t *buf, uint64_t len, uint64_t off) {
  uint64_t done = 0;
  while (done < len) {
    uint64_t pos = off + done, g = pos / FAKE_GRAIN * FAKE_GRAIN;
    uint64_t seg = g + FAKE_GRAIN - pos;
    if (seg > len - done) seg = len - done;
    int i = 0;
    for (; i < ch->n; i++) {
      int h = holds(ch, i, g);
      if (h < 0) return -1;
      if (h) break;
    }
    if (i == ch->n) {
      errno = EIO;
      return -1;
    }
    uint64_t got = 0;
    while (got < seg) {
      ssize_t r = pread(ch->fd[i], buf + done + got, seg - got, (off_t)(pos + got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return -1;
      if (r == 0) { /* past the end of a short extent: zeros */
        memset(buf + done + got, 0, seg - got);
        break;
      }
      got += (uint64_t)r;
    }
    done += seg;
  }
  return 0;
}

static int block_cmp(const void *a, const void *b) {
  const VixDiskLibBlock *x = a, *y = b;
  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

int fake_allocated_chain(const struct fake_chain *ch, uint64_t start, uint64_t end, uint64_t chunk, uint64_t limit,
                         VixDiskLibBlock **out, uint32_t *n) {
  VixDiskLibBlock *all = NULL;
  size_t count = 0;
  for (int i = 0; i < ch->n; i++) {
    VixDiskLibBlock *b = NULL;
    uint32_t m = 0;
    if (fake_allocated(ch->fd[i], start, end, chunk, limit, &b, &m) < 0) {
      free(all);
      return -1;
    }
    VixDiskLibBlock *na = realloc(all, (count + m + 1) * sizeof *all);
    if (na == NULL) {
      free(b);
      free(all);
      return -1;
    }
    all = na;
    memcpy(all + count, b, m * sizeof *b);
    count += m;
    free(b);
  }
  if (all == NULL && (all = malloc(sizeof *all)) == NULL) return -1;
  qsort(all, count, sizeof *all, block_cmp);
  size_t k = 0;
  for (size_t i = 0; i < count; i++) {
    if (k > 0 && all[k - 1].offset + all[k - 1].length >= all[i].offset) {
      uint64_t e = all[i].offset + all[i].length;
      if (e > all[k - 1].offset + all[k - 1].length) all[k - 1].length = e - all[k - 1].offset;
    } else {
      all[k++] = all[i];
    }
  }
  *out = all;
  *n = (uint32_t)k;
  return 0;
}

int fake_allocated(int fd, uint64_t start, uint64_t end, uint64_t chunk, uint64_t limit, VixDiskLibBlock **out,
                   uint32_t *n) {
  size_t cap = 16, count = 0;
  VixDiskLibBlock *b = malloc(cap * sizeof *b);
  if (b == NULL) return -1;
  const off_t cb = (off_t)chunk * VIXDISKLIB_SECTOR_SIZE;
  off_t pos = (off_t)start * VIXDISKLIB_SECTOR_SIZE;
  const off_t stop = (off_t)(end < limit ? end : limit) * VIXDISKLIB_SECTOR_SIZE;
  while (pos < stop) {
    off_t data = lseek(fd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break; /* no data after pos */
      free(b);
      return -1;
    }
    if (data >= stop) break;
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) {
      free(b);
      return -1;
    }
    if (hole > stop) hole = stop;
    /* Whole chunks around the data: a chunk with any data byte is allocated. */
    uint64_t s = (uint64_t)(data / cb) * chunk;
    uint64_t e = (uint64_t)((hole + cb - 1) / cb) * chunk;
    if (count > 0 && b[count - 1].offset + b[count - 1].length >= s) {
      uint64_t ee = b[count - 1].offset + b[count - 1].length;
      if (e > ee) b[count - 1].length = e - b[count - 1].offset;
    } else {
      if (count == cap) {
        cap *= 2;
        VixDiskLibBlock *nb = realloc(b, cap * sizeof *b);
        if (nb == NULL) {
          free(b);
          return -1;
        }
        b = nb;
      }
      b[count].offset = s;
      b[count].length = e - s;
      count++;
    }
    pos = (off_t)e * VIXDISKLIB_SECTOR_SIZE;
  }
  *out = b;
  *n = (uint32_t)count;
  return 0;
}
