/*
 * crelay: the floor of a userspace TCP relay, for BenchmarkProxyInProcess.
 * One thread, epoll, one read and one write per ready socket, no framing,
 * no journal. It listens on a free loopback port, prints the port on
 * stdout, and relays each client connection to 127.0.0.1:TARGET_PORT.
 *
 * usage: crelay TARGET_PORT
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXFD 65536

static int peer[MAXFD];

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: crelay TARGET_PORT\n");
		return 2;
	}
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct sockaddr_in t = a;
	t.sin_port = htons(atoi(argv[1]));
	int one = 1;
	int ls = socket(AF_INET, SOCK_STREAM, 0);
	socklen_t al = sizeof a;
	if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 128) ||
	    getsockname(ls, (struct sockaddr *)&a, &al)) {
		perror("crelay: listen");
		return 1;
	}
	printf("%d\n", ntohs(a.sin_port));
	fflush(stdout);
	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
	struct epoll_event evs[64];
	static char buf[65536];
	for (;;) {
		int n = epoll_wait(ep, evs, 64, -1);
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == ls) {
				int c = accept(ls, NULL, NULL);
				if (c < 0)
					continue;
				int u = socket(AF_INET, SOCK_STREAM, 0);
				if (c >= MAXFD || u < 0 || u >= MAXFD ||
				    connect(u, (struct sockaddr *)&t, sizeof t)) {
					close(c);
					if (u >= 0)
						close(u);
					continue;
				}
				setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
				setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
				peer[c] = u;
				peer[u] = c;
				struct epoll_event e1 = {.events = EPOLLIN, .data.fd = c};
				struct epoll_event e2 = {.events = EPOLLIN, .data.fd = u};
				epoll_ctl(ep, EPOLL_CTL_ADD, c, &e1);
				epoll_ctl(ep, EPOLL_CTL_ADD, u, &e2);
				continue;
			}
			ssize_t r = read(fd, buf, sizeof buf);
			if (r <= 0) {
				close(peer[fd]);
				close(fd);
				continue;
			}
			for (ssize_t off = 0; off < r;) {
				ssize_t w = write(peer[fd], buf + off, r - off);
				if (w <= 0)
					break;
				off += w;
			}
		}
	}
}
