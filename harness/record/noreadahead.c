/* LD_PRELOAD shim for the oracles that a skinny core is made for (gdb,
 * pystack; harness/record/oracle_reads.py): every file they open or map is
 * read without readahead, so that the page cache afterwards holds the pages
 * they read and few others. It changes no result: only the kernel's
 * read-ahead hints (posix_fadvise, madvise). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/types.h>

static void no_readahead(int fd)
{
  if (fd >= 0)
    posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
}

/* open and open64: the same wrapper around the next definition of each. */
#define WRAP_OPEN(name)                                                        \
  int name(const char *path, int flags, ...)                                   \
  {                                                                            \
    static int (*real)(const char *, int, ...);                                \
    if (!real)                                                                 \
      real = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, #name);         \
    va_list ap;                                                                \
    va_start(ap, flags);                                                       \
    int mode = va_arg(ap, int);                                                \
    va_end(ap);                                                                \
    int fd = real(path, flags, mode);                                          \
    no_readahead(fd);                                                          \
    return fd;                                                                 \
  }

WRAP_OPEN(open)
WRAP_OPEN(open64)

int openat(int dirfd, const char *path, int flags, ...)
{
  static int (*real)(int, const char *, int, ...);
  if (!real)
    real = (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, "openat");
  va_list ap;
  va_start(ap, flags);
  int mode = va_arg(ap, int);
  va_end(ap);
  int fd = real(dirfd, path, flags, mode);
  no_readahead(fd);
  return fd;
}

static void *mapped(void *p, size_t len, int fd)
{
  if (p != MAP_FAILED && fd >= 0)
    madvise(p, len, MADV_RANDOM);
  return p;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
  static void *(*real)(void *, size_t, int, int, int, off_t);
  if (!real)
    real = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap");
  return mapped(real(addr, len, prot, flags, fd, off), len, fd);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
  static void *(*real)(void *, size_t, int, int, int, off_t);
  if (!real)
    real = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap64");
  return mapped(real(addr, len, prot, flags, fd, off), len, fd);
}
