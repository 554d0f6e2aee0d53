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

void fake_stat(const struct fake_config *c, const char *fmt, ...) {
  if (c->stats[0] == 0) return;
  char line[8192];
  int n = snprintf(line, sizeof line, "pid=%d ", (int)getpid());
  va_list ap;
  va_start(ap, fmt);
  n += vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
  va_end(ap);
  if (n > (int)sizeof line - 2) n = sizeof line - 2;
  line[n++] = '\n';
  /* One write with O_APPEND: lines of concurrent readers never interleave. */
  int fd = open(c->stats, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  ssize_t w = write(fd, line, n);
  (void)w;
  close(fd);
}

int fake_resolve(const struct fake_config *c, const char *dspath, char *flat, size_t flatlen, uint64_t *sectors,
                 char *err, size_t errlen) {
  /* "[LocalDS_0] vm-1/vm-1.vmdk" */
  if (dspath[0] != '[') {
    set_err(err, errlen, "not a datastore path: %s", dspath);
    return -1;
  }
  const char *close = strchr(dspath, ']');
  if (close == NULL) {
    set_err(err, errlen, "not a datastore path: %s", dspath);
    return -1;
  }
  char name[256];
  snprintf(name, sizeof name, "%.*s", (int)(close - dspath - 1), dspath + 1);
  const char *rel = close + 1;
  while (*rel == ' ') rel++;
  const char *dir = NULL;
  for (int i = 0; i < c->n_ds; i++)
    if (strcmp(c->ds[i].name, name) == 0) dir = c->ds[i].path;
  if (dir == NULL) {
    set_err(err, errlen, "datastore %s not found", name);
    return -1;
  }
  char desc[8192];
  snprintf(desc, sizeof desc, "%s/%s", dir, rel);
  FILE *f = fopen(desc, "r");
  if (f == NULL) {
    set_err(err, errlen, "%s: %s", dspath, strerror(errno));
    return -1;
  }
  /* The extent line: RW <sectors> VMFS|FLAT "<file>" [offset]. One extent only. */
  char line[4096];
  int found = 0;
  while (fgets(line, sizeof line, f) != NULL) {
    unsigned long long n;
    char kind[32], file[2048];
    if (sscanf(line, "RW %llu %31s \"%2047[^\"]\"", &n, kind, file) == 3) {
      if (found) {
        fclose(f);
        set_err(err, errlen, "%s: more than one extent (the fake serves one)", dspath);
        return -1;
      }
      found = 1;
      *sectors = n;
      const char *slash = strrchr(desc, '/');
      snprintf(flat, flatlen, "%.*s/%s", (int)(slash - desc), desc, file);
    }
  }
  fclose(f);
  if (!found) {
    set_err(err, errlen, "%s: no extent line in the descriptor", dspath);
    return -1;
  }
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
