package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/dicom-gateway/gateway/dicomweb"
)

// runNewToken is `gateway new-token NAME ROLE...`: it makes a random bearer
// token, prints it once for the client, and prints the auth.tokens entry
// (only its SHA-256) for the --config file, so no token is ever stored.
func runNewToken(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) < 2 {
		return errors.New("usage: gateway new-token NAME ROLE... (roles: store, read, transfer, admin)")
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return err
	}
	token := base64.RawURLEncoding.EncodeToString(raw[:])
	sum := sha256.Sum256([]byte(token))
	fmt.Fprintf(stderr, "token for %s (give it to the client; it is not stored anywhere):\n", args[0])
	fmt.Fprintln(stdout, token)
	fmt.Fprintf(stderr, "\nadd to auth.tokens in --config:\n    - name: %s\n      sha256: %q\n      roles: [%s]\n",
		args[0], hex.EncodeToString(sum[:]), strings.Join(args[1:], ", "))
	return nil
}

// runHashPassword is `gateway hash-password`: it reads a password from stdin
// and prints its bcrypt hash for auth.basic[].password_hash.
func runHashPassword(_ context.Context, _ []string, stdout, stderr io.Writer) error {
	fmt.Fprintln(stderr, "password (one line on stdin):")
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return errors.New("empty password")
	}
	h, err := dicomweb.HashPassword(pw)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, h)
	return nil
}
