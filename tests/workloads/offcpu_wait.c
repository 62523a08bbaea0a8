// Off-CPU workload: each round spins `spin_us` of CPU time, then blocks
// `block_us` in sonde_wl_block (nanosleep) or in sonde_wl_read (a read on a
// pipe a helper thread writes to after `block_us`). Usage:
//   offcpu_wait sleep|pipe SECONDS [spin_us block_us]
// The defaults (2 ms of CPU, 8 ms blocked) keep it ~80 % off CPU.
//   offcpu_wait burst SECONDS BRIEF block_us NS_FILE
// instead: BRIEF short sleeps (1 us asked; well under 1 ms) in
// sonde_wl_brief, then one of `block_us` in sonde_wl_block, whose time
// (CLOCK_MONOTONIC ns, cumulative) is written to NS_FILE after each.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long block_us = 8000;
static int pipefd[2];

static double now(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

__attribute__((noinline)) static void sonde_wl_spin(long us) {
    double end = now(CLOCK_THREAD_CPUTIME_ID) + us / 1e6;
    volatile unsigned long x = 0;
    while (now(CLOCK_THREAD_CPUTIME_ID) < end)
        for (int i = 0; i < 1000; i++) x += i;
}

__attribute__((noinline)) void sonde_wl_block(void) {
    struct timespec t = {block_us / 1000000, (block_us % 1000000) * 1000};
    nanosleep(&t, NULL);
    __asm__ volatile("" ::: "memory"); // not a tail call: keep this frame
}

__attribute__((noinline)) void sonde_wl_brief(void) {
    struct timespec t = {0, 1000};
    nanosleep(&t, NULL);
    __asm__ volatile("" ::: "memory");
}

// Bursts of short blocks, each followed by a long one, timed.
static int burst(double secs, long brief, const char *ns_file) {
    double end = now(CLOCK_MONOTONIC) + secs;
    double blocked = 0;
    while (now(CLOCK_MONOTONIC) < end) {
        for (long i = 0; i < brief; i++) sonde_wl_brief();
        double t0 = now(CLOCK_MONOTONIC);
        sonde_wl_block();
        blocked += now(CLOCK_MONOTONIC) - t0;
        FILE *f = fopen(ns_file, "w");
        if (!f) return 1;
        fprintf(f, "%.0f\n", blocked * 1e9);
        fclose(f);
    }
    return 0;
}

__attribute__((noinline)) void sonde_wl_read(void) {
    char c;
    if (read(pipefd[0], &c, 1) != 1) exit(1);
    __asm__ volatile("" ::: "memory");
}

static void *writer(void *arg) {
    (void)arg;
    struct timespec t = {block_us / 1000000, (block_us % 1000000) * 1000};
    for (;;) {
        nanosleep(&t, NULL);
        if (write(pipefd[1], "x", 1) != 1) exit(1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr,
                "usage: %s sleep|pipe SECONDS [spin_us block_us]\n"
                "       %s burst SECONDS BRIEF block_us NS_FILE\n",
                argv[0], argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "burst") == 0) {
        if (argc < 6) {
            fprintf(stderr, "usage: %s burst SECONDS BRIEF block_us NS_FILE\n", argv[0]);
            return 2;
        }
        block_us = atol(argv[4]);
        return burst(atof(argv[2]), atol(argv[3]), argv[5]);
    }
    int use_pipe = strcmp(argv[1], "pipe") == 0;
    double secs = atof(argv[2]);
    long spin_us = argc > 3 ? atol(argv[3]) : 2000;
    if (argc > 4) block_us = atol(argv[4]);
    if (use_pipe) {
        pthread_t t;
        if (pipe(pipefd) != 0 || pthread_create(&t, NULL, writer, NULL) != 0) return 1;
    }
    double end = now(CLOCK_MONOTONIC) + secs;
    while (now(CLOCK_MONOTONIC) < end) {
        sonde_wl_spin(spin_us);
        if (use_pipe)
            sonde_wl_read();
        else
            sonde_wl_block();
    }
    return 0;
}
