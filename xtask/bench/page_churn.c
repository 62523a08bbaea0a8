// Benchmark workload for the memory collector's overhead: N rounds of
// mmap 1 MiB anonymous, write every page (256 page faults), munmap; prints
// the thread's CPU ns per round, which includes the page faults, the
// syscalls and any eBPF programs they run. A worst case for tier 1: every
// operation is one it hooks.
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define SIZE (1 << 20)

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 2000;
    struct timespec a, b;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    for (long i = 0; i < n; i++) {
        char *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return 1;
        for (long o = 0; o < SIZE; o += 4096) ((volatile char *)p)[o] = 1;
        munmap(p, SIZE);
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("mmap+256 faults+munmap ns/round: %.0f\n", ns / n);
    return 0;
}
