/* CPU profiler workload: spends its time in a known call chain.
 *
 *   profile_abc cpu [SECONDS]   main -> sonde_wl_a -> sonde_wl_b -> sonde_wl_c (spins)
 *   profile_abc mix [SECONDS]   spins in three leaves, ~50% / 30% / 20% of the time
 *   profile_abc sys [SECONDS]   ... -> sonde_wl_c_sys, which reads /dev/zero in a
 *                               loop, so most time is in the kernel
 *
 * Built with -fno-omit-frame-pointer so frame-pointer unwinding sees the
 * whole chain. Exits after SECONDS (default: run until killed).
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long sink;
static double deadline;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Called rarely from c so that c is not a leaf: gcc omits the frame
 * pointer setup of leaf functions even with -fno-omit-frame-pointer, and
 * the frame-pointer walk would then skip c's caller. */
__attribute__((noinline)) void sonde_wl_tick(void) {
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void sonde_wl_c(void) {
    for (unsigned long i = 0; i < 20000000UL; i++) {
        sink += i * 2654435761UL;
        if ((i & 0xfffff) == 0)
            sonde_wl_tick();
    }
}

__attribute__((noinline)) void sonde_wl_c_sys(void) {
    static char buf[1 << 20];
    int fd = open("/dev/zero", O_RDONLY);
    for (int i = 0; i < 50; i++)
        sink += read(fd, buf, sizeof buf);
    close(fd);
}

static inline __attribute__((always_inline)) void spin(unsigned long n) {
    for (unsigned long i = 0; i < n; i++) {
        sink += i * 2654435761UL;
        if ((i & 0xfffff) == 0)
            sonde_wl_tick();
    }
}

/* Three leaves with known weights, for comparing shares with perf. */
__attribute__((noinline)) void sonde_wl_leaf5(void) { spin(5000000UL); }
__attribute__((noinline)) void sonde_wl_leaf3(void) { spin(3000000UL); }
__attribute__((noinline)) void sonde_wl_leaf2(void) { spin(2000000UL); }

__attribute__((noinline)) void sonde_wl_mix(void) {
    sonde_wl_leaf5();
    sonde_wl_leaf3();
    sonde_wl_leaf2();
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void sonde_wl_b(int sys) {
    if (sys)
        sonde_wl_c_sys();
    else
        sonde_wl_c();
    __asm__ volatile("" ::: "memory"); /* no tail call: keep b's frame */
}

__attribute__((noinline)) void sonde_wl_a(int sys) {
    sonde_wl_b(sys);
    __asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv) {
    int sys = argc > 1 && strcmp(argv[1], "sys") == 0;
    int mix = argc > 1 && strcmp(argv[1], "mix") == 0;
    double secs = argc > 2 ? atof(argv[2]) : 0;
    deadline = secs > 0 ? now() + secs : 0;
    while (deadline == 0 || now() < deadline) {
        if (mix)
            sonde_wl_mix();
        else
            sonde_wl_a(sys);
    }
    return 0;
}
