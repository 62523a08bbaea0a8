/* Allocation workload for `sonde alloc` and the memory collector.
 *
 *   leak_churn leak COUNTER_FILE [SECONDS]
 *       every 10 ms: sonde_leak_64k() allocates 64 KiB, touches every page
 *       and keeps it (a leak); sonde_churn_64k() allocates 64 KiB, writes
 *       its first page (like a mostly unused scratch buffer) and frees it.
 *       After each round the number of rounds is written to COUNTER_FILE,
 *       and each leak appends its CLOCK_MONOTONIC time in ns to
 *       COUNTER_FILE.log, so a test knows the true leaked bytes of any
 *       time window.
 *
 *       Why churn writes one page only: glibc hands the chunk churn just
 *       freed to the next leak, so the pages the heap grows by are first
 *       touched by whichever function allocates from the fresh top of the
 *       heap. If churn wrote its whole buffer it would fault in every new
 *       page and page-fault attribution (the memory collector, tier 1)
 *       would name churn, not the leak: docs/memory.md explains this
 *       limit; `sonde alloc` (tier 2) is exact either way.
 *   leak_churn known COUNTER_FILE [SECONDS]
 *       every 10 ms, kept allocations of known sizes through each path:
 *       calloc(100, 1000), malloc(1000) grown by realloc to 50000,
 *       realloc(NULL, 3000), posix_memalign(64, 4096), aligned_alloc(64,
 *       8192); and a malloc(2000) freed by realloc(p, 0).
 *
 * Built with -fno-omit-frame-pointer so stacks name these functions.
 * Exits after SECONDS (default 60).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)
#define MAX_KEPT (1 << 17)

/* Kept pointers stay reachable here, like an ever-growing cache. A static
 * array, so the bookkeeping allocates nothing itself. */
static void *kept[MAX_KEPT];
static size_t nkept;

static void keep(void *p) {
    if (nkept < MAX_KEPT) kept[nkept++] = p;
}

static int leak_log = -1;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Writes to every page, so RSS grows (page faults) in the caller. */
static inline __attribute__((always_inline)) void touch(char *p, size_t n) {
    for (size_t i = 0; i < n; i += 4096) ((volatile char *)p)[i] = 1;
}

__attribute__((noinline)) void sonde_leak_64k(void) {
    char *p = malloc(CHUNK);
    if (!p) return;
    touch(p, CHUNK);
    keep(p);
    if (leak_log >= 0) {
        struct timespec ts;
        char buf[32];
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int len = snprintf(buf, sizeof buf, "%lld\n",
                           (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
        if (write(leak_log, buf, len) < 0) exit(3);
    }
}

__attribute__((noinline)) void sonde_churn_64k(void) {
    char *p = malloc(CHUNK);
    if (!p) return;
    touch(p, 4096);
    free(p);
}

__attribute__((noinline)) void sonde_calloc_100k(void) { keep(calloc(100, 1000)); }

__attribute__((noinline)) void sonde_realloc_grow(void) {
    void *p = malloc(1000);
    keep(realloc(p, 50000));
}

__attribute__((noinline)) void sonde_realloc_null(void) { keep(realloc(NULL, 3000)); }

__attribute__((noinline)) void sonde_posix_memalign(void) {
    void *p = NULL;
    if (posix_memalign(&p, 64, 4096) == 0) keep(p);
}

__attribute__((noinline)) void sonde_aligned_alloc(void) { keep(aligned_alloc(64, 8192)); }

__attribute__((noinline)) void sonde_realloc_free(void) {
    void *p = malloc(2000);
    /* glibc frees p and returns NULL; free anything else it returns. */
    void *r = realloc(p, 0);
    if (r) free(r);
}

static void write_counter(int fd, long n) {
    char buf[32];
    int len = snprintf(buf, sizeof buf, "%ld\n", n);
    if (pwrite(fd, buf, len, 0) < 0) exit(3);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s leak|known COUNTER_FILE [SECONDS]\n", argv[0]);
        return 2;
    }
    int known = strcmp(argv[1], "known") == 0;
    int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 2;
    char logname[4096];
    snprintf(logname, sizeof logname, "%s.log", argv[2]);
    leak_log = open(logname, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (leak_log < 0) return 2;
    double end = now() + (argc > 3 ? atof(argv[3]) : 60);
    struct timespec tick = {0, 10 * 1000 * 1000};
    long rounds = 0;
    write_counter(fd, 0);
    while (now() < end) {
        if (known) {
            sonde_calloc_100k();
            sonde_realloc_grow();
            sonde_realloc_null();
            sonde_posix_memalign();
            sonde_aligned_alloc();
            sonde_realloc_free();
        } else {
            sonde_leak_64k();
            sonde_churn_64k();
        }
        write_counter(fd, ++rounds);
        nanosleep(&tick, NULL);
    }
    return 0;
}
