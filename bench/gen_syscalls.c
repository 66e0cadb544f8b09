/* Syscall generator for bench/capture.py: makes one cheap system call (getppid, through
 * syscall(2) so libc cannot cache it) in a tight loop for a fixed wall-clock time, then prints
 * one line: "calls=N seconds=S rate=R".
 *
 *   gen_syscalls SECONDS [START_FD]
 *
 * With START_FD, the generator first blocks reading one byte from that fd, so that several
 * copies started by the bench begin their loops together. The clock is read through the vDSO
 * (no system call) once every 1024 calls, so every system call it makes in the loop is getppid.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s SECONDS [START_FD]\n", argv[0]);
		return 2;
	}
	double seconds = atof(argv[1]);
	if (argc > 2) {
		char c;
		if (read(atoi(argv[2]), &c, 1) < 0) {
			perror("read start fd");
			return 1;
		}
	}
	unsigned long long calls = 0;
	double t0 = now(), t = t0;
	while (t - t0 < seconds) {
		for (int i = 0; i < 1024; i++)
			syscall(SYS_getppid);
		calls += 1024;
		t = now();
	}
	double elapsed = t - t0;
	printf("calls=%llu seconds=%.6f rate=%.1f\n", calls, elapsed, calls / elapsed);
	return 0;
}
