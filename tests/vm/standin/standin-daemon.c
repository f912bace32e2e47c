/*
 * standin-daemon.c - NOT modbrokerd.  Harness self-test only: binds the Unix
 * socket given by --socket (so scenarios can wait for it), records its pid
 * in /run/standin.pid and sleeps until killed.  The merging is done by
 * standin-client.sh; together they let broker.sh/demo.sh be exercised
 * before the real binaries exist.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
	const char *path = "/run/modbroker.sock";
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	FILE *f;
	int fd, i;

	for (i = 1; i + 1 < argc; i++)
		if (!strcmp(argv[i], "--socket"))
			path = argv[i + 1];
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
	unlink(path);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 128)) {
		perror("standin-daemon: socket");
		return 1;
	}
	f = fopen("/run/standin.pid", "w");
	if (f) {
		fprintf(f, "%d\n", getpid());
		fclose(f);
	}
	fprintf(stderr, "standin-daemon: listening on %s (stand-in, not modbrokerd)\n", path);
	for (;;)
		pause();
}
