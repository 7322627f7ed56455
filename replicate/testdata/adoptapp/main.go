// Command adoptapp is the process tree the adoption tests start in the host
// PID namespace and hand to Engine.Adopt: a parent holding a counter in
// memory that sends each increment over a pipe to a child, which appends
// "NONCE COUNTER\n" to the file named by APP_DATA. Every APP_TICK (default
// 20ms) the counter goes up by one, so the file's lines count up without a
// gap as long as memory, pipe and file all survive.
//
// When ready the parent prints "ready pid=PID child=PID nonce=NONCE".
//
// With ADOPTAPP_SHELL=1 it first becomes a session leader standing for a
// login shell and starts the tree as a job of that session (a process
// group of its own, not the session's leader), hands its output over and
// keeps nothing of the tree's open; it exits with the tree's root.
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "child" {
		child()
		return
	}
	if os.Getenv("ADOPTAPP_SHELL") == "1" {
		shell()
		return
	}
	tick := 20 * time.Millisecond
	if v := os.Getenv("APP_TICK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fail(err)
		}
		tick = d
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	nonce := hex.EncodeToString(b[:])
	cmd := exec.Command("/proc/self/exe", "child", nonce)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	w, err := cmd.StdinPipe()
	if err != nil {
		fail(err)
	}
	if err := cmd.Start(); err != nil {
		fail(err)
	}
	fmt.Printf("ready pid=%d child=%d nonce=%s\n", os.Getpid(), cmd.Process.Pid, nonce)
	var counter uint64
	for {
		time.Sleep(tick)
		counter++
		if _, err := fmt.Fprintf(w, "%d\n", counter); err != nil {
			fail(err)
		}
	}
}

func child() {
	f, err := os.OpenFile(os.Getenv("APP_DATA"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fail(err)
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if _, err := fmt.Fprintf(f, "%s %s\n", os.Args[2], sc.Text()); err != nil {
			fail(err)
		}
	}
	fail(fmt.Errorf("pipe closed: %v", sc.Err()))
}

// shell runs the tree as a job of a session this process leads.
func shell() {
	if _, err := unix.Setsid(); err != nil {
		fail(fmt.Errorf("setsid: %w", err))
	}
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = slices.DeleteFunc(os.Environ(), func(v string) bool { return v == "ADOPTAPP_SHELL=1" })
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		fail(err)
	}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		fail(err)
	}
	for fd := 0; fd <= 2; fd++ {
		if err := unix.Dup2(int(null.Fd()), fd); err != nil {
			fail(err)
		}
	}
	null.Close()
	_ = cmd.Wait()
	os.Exit(0)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "adoptapp:", err)
	os.Exit(1)
}
