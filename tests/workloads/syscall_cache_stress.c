// Exercises every flush path of the syscall collector's per-CPU call cache
// (ebpf/sonde-ebpf/src/syscalls.rs) with exactly known counts.
//
// Usage: syscall_cache_stress THREADS ROUNDS
// Waits for one line on stdin, then starts THREADS threads; each makes,
// ROUNDS times, one call of each of the CALLS below: more distinct syscalls
// than the cache's pending list holds (a full-list flush), numbers 512 and
// 513 (no such syscall on x86_64: ENOSYS) which share cache slots with
// read (0) and write (1) (conflict flushes), a sched_yield every 16 rounds
// and a move to another CPU every 64 rounds (switch flushes, calls of one
// thread spread over CPUs). More threads than CPUs also get them preempted
// mid-stream. Prints "done" when all threads are joined, then waits for
// another line before exiting.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

static long rounds;
static int devnull;
static int ncpu;

static void one_round(long r, char *buf) {
    struct timeval tv;
    struct timespec ts;
    struct itimerval it;
    unsigned cpu;
    syscall(SYS_getppid);
    syscall(SYS_getuid);
    syscall(SYS_getgid);
    syscall(SYS_geteuid);
    syscall(SYS_getegid);
    syscall(SYS_getpgrp);
    syscall(SYS_getsid, 0);
    syscall(SYS_getpgid, 0);
    syscall(SYS_umask, 022);
    syscall(SYS_sched_getscheduler, 0);
    syscall(SYS_sched_get_priority_max, 0);
    syscall(SYS_sched_get_priority_min, 0);
    syscall(SYS_sched_rr_get_interval, 0, &ts);
    syscall(SYS_times, NULL);
    syscall(SYS_sysinfo, buf);
    syscall(SYS_uname, buf);
    syscall(SYS_getrusage, 0, buf);
    syscall(SYS_getrlimit, 0, buf);
    syscall(SYS_getresuid, buf, buf + 8, buf + 16);
    syscall(SYS_getresgid, buf, buf + 8, buf + 16);
    syscall(SYS_getcwd, buf, 256);
    syscall(SYS_getgroups, 0, NULL);
    syscall(SYS_personality, 0xffffffff);
    syscall(SYS_getitimer, ITIMER_REAL, &it);
    syscall(SYS_alarm, 0);
    syscall(SYS_time, NULL);
    syscall(SYS_gettimeofday, &tv, NULL);
    syscall(SYS_clock_getres, 0, &ts);
    syscall(SYS_getcpu, &cpu, NULL, NULL);
    syscall(SYS_getpriority, 0, 0);
    syscall(SYS_ioprio_get, 1, 0);
    syscall(SYS_lseek, -1, 0, SEEK_SET);    // EBADF
    syscall(SYS_fcntl, -1, F_GETFD);        // EBADF
    syscall(SYS_dup, -1);                   // EBADF
    syscall(512);                           // ENOSYS, cache slot of read
    syscall(SYS_read, devnull, buf, 0);
    syscall(513);                           // ENOSYS, cache slot of write
    syscall(SYS_write, devnull, buf, 1);
    if (r % 16 == 15) syscall(SYS_sched_yield);
    if (r % 64 == 63) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((r / 64) % ncpu, &set);
        syscall(SYS_sched_setaffinity, 0, sizeof set, &set);
    }
}

static void *worker(void *arg) {
    (void)arg;
    char buf[512];
    for (long r = 0; r < rounds; r++) one_round(r, buf);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s THREADS ROUNDS\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[1]);
    rounds = atol(argv[2]);
    if (threads <= 0 || threads > 64 || rounds <= 0) return 2;
    devnull = open("/dev/null", O_RDWR);
    ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (devnull < 0 || ncpu <= 0) return 1;
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;
    pthread_t t[64];
    for (int i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, worker, NULL) != 0) return 1;
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    printf("done\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 0;
    return 0;
}
