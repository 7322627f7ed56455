// Package config is doppel's typed configuration: defaults, loading from a
// YAML file, DOPPEL_* environment variables and command-line flags (in that
// order of precedence, lowest first), and validation with errors that name
// the key, the bad value and the fix.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// DefaultPath is the configuration file read when --config is not given.
// A missing file at the default path is not an error.
const DefaultPath = "/etc/doppel/config.yaml"

// EnvPrefix prefixes the environment variables that override keys:
// checkpoint.interval is DOPPEL_CHECKPOINT_INTERVAL.
const EnvPrefix = "DOPPEL"

// Config is the whole configuration of a doppel node and its CLI.
type Config struct {
	Node       Node       `mapstructure:"node"`
	Ports      Ports      `mapstructure:"ports"`
	API        API        `mapstructure:"api"`
	CRIU       CRIU       `mapstructure:"criu"`
	Checkpoint Checkpoint `mapstructure:"checkpoint"`
	Transfer   Transfer   `mapstructure:"transfer"`
	Metrics    Metrics    `mapstructure:"metrics"`
	Balance    Balance    `mapstructure:"balance"`
	Log        Log        `mapstructure:"log"`
}

// Node is the identity, role and storage of this node.
type Node struct {
	// Name of this node in the cluster. Empty means the host name.
	Name string `mapstructure:"name"`
	// Role is worker (hosts apps and clones) or witness (votes only).
	Role string `mapstructure:"role"`
	// Priority ranks this node among clones holding the same epoch when
	// one is promoted: higher first.
	Priority int `mapstructure:"priority"`
	// StateDir holds epochs, clones and the node's own state. Absolute.
	StateDir string `mapstructure:"state_dir"`
	// Bind is the IP address gossip, raft and peer streams listen on.
	Bind string `mapstructure:"bind"`
	// Join lists nodes already in the cluster (IP or IP:gossip-port).
	// Empty: this node starts a new cluster.
	Join []string `mapstructure:"join"`
	// KeyFile holds the cluster key written by doppel init.
	KeyFile string `mapstructure:"key_file"`
	// Preset sets failure detection and raft timing: lan or fast.
	Preset string `mapstructure:"preset"`
}

// Ports are the TCP (and, for gossip, UDP) ports on node.bind.
type Ports struct {
	Gossip int `mapstructure:"gossip"`
	Raft   int `mapstructure:"raft"`
	Peer   int `mapstructure:"peer"`
}

// API is the local API of the daemon, used by the CLI and the TUI.
type API struct {
	// Socket is the unix socket (root only).
	Socket string `mapstructure:"socket"`
}

// Transfer tunes replication to clones.
type Transfer struct {
	// RateLimit caps the bytes per second this node sends to clones, so
	// replication does not starve the app's own traffic. 0: no cap.
	RateLimit int64 `mapstructure:"rate_limit"`
}

// Balance is the load balancer run by the raft leader: it relocates an app
// off a node that stays above High for Window to one under Low.
type Balance struct {
	Enabled bool `mapstructure:"enabled"`
	// High and Low are loads, 0 idle to 1 full (CPU per core or memory
	// pressure, whichever is higher).
	High float64 `mapstructure:"high"`
	Low  float64 `mapstructure:"low"`
	// Window is how long a node must stay above High before a move.
	Window time.Duration `mapstructure:"window"`
	// MinInterval is the least time between two moves of one app.
	MinInterval time.Duration `mapstructure:"min_interval"`
}

// Metrics is the Prometheus endpoint.
type Metrics struct {
	// Listen is the address of /metrics, e.g. 127.0.0.1:9477. Empty: off.
	Listen string `mapstructure:"listen"`
}

// CRIU says where the CRIU binary is.
type CRIU struct {
	// Path to the criu binary. Empty: Prefix/bin/criu, then criu on PATH.
	Path string `mapstructure:"path"`
	// Prefix is where scripts/get-criu.sh installs a private CRIU.
	Prefix string `mapstructure:"prefix"`
}

// Checkpoint sets how applications are checkpointed.
type Checkpoint struct {
	// Interval between two epochs of a running app.
	Interval time.Duration `mapstructure:"interval"`
	// Retention is how many complete epochs are kept per app (at least 1).
	Retention int `mapstructure:"retention"`
	// Standby keeps, on each clone, the app's newest epoch ready to
	// restore in the work directory (a tmpfs: about the app's memory
	// size), so that failover and relocation skip writing every image.
	Standby bool `mapstructure:"standby"`
}

// Log configures the daemon's structured log.
type Log struct {
	// Level is one of debug, info, warn, error.
	Level string `mapstructure:"level"`
	// Format is text or json.
	Format string `mapstructure:"format"`
}

// DefaultConfig is the configuration used when nothing is set. Every key of
// config.example.yaml has exactly this value.
func DefaultConfig() Config {
	return Config{
		Node: Node{
			Name:     "",
			Role:     "worker",
			Priority: 0,
			StateDir: "/var/lib/doppel",
			Bind:     "0.0.0.0",
			Join:     []string{},
			KeyFile:  "/etc/doppel/cluster.key",
			Preset:   "lan",
		},
		Ports: Ports{Gossip: 7946, Raft: 7947, Peer: 7948},
		API:   API{Socket: "/run/doppel/doppel.sock"},
		CRIU: CRIU{
			Path:   "",
			Prefix: "/usr/local/lib/doppel/criu",
		},
		Checkpoint: Checkpoint{
			Interval:  5 * time.Second,
			Retention: 2,
			Standby:   true,
		},
		Transfer: Transfer{RateLimit: 0},
		Metrics:  Metrics{Listen: ""},
		Balance: Balance{
			Enabled:     false,
			High:        0.8,
			Low:         0.5,
			Window:      time.Minute,
			MinInterval: 10 * time.Minute,
		},
		Log: Log{
			Level:  "info",
			Format: "text",
		},
	}
}

// ErrInvalid is wrapped by every error that comes from a bad value or file.
var ErrInvalid = errors.New("invalid configuration")

// Load builds the configuration: defaults, then the file (path, or
// DefaultPath when path is empty and that file exists), then DOPPEL_*
// environment variables, then the flags of fs that were set and are bound in
// flagKeys (flag name -> config key). Unknown keys in the file are errors.
func Load(path string, fs *pflag.FlagSet, flagKeys map[string]string) (Config, error) {
	return load(path, DefaultPath, fs, flagKeys)
}

func load(path, defaultPath string, fs *pflag.FlagSet, flagKeys map[string]string) (Config, error) {
	v := viper.New()
	def := DefaultConfig()
	for key, val := range flatten(def) {
		v.SetDefault(key, val)
	}
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()

	explicit := path != ""
	if !explicit {
		path = defaultPath
	}
	if _, err := os.Stat(path); err == nil || explicit {
		v.SetConfigFile(path)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			return Config{}, fmt.Errorf("%w: cannot read %s: %s (fix the file or pass --config)", ErrInvalid, path, oneLine(err))
		}
		if err := unknownKeys(v, def); err != nil {
			return Config{}, fmt.Errorf("%w: %s: %w", ErrInvalid, path, err)
		}
	}
	if fs != nil {
		for name, key := range flagKeys {
			f := fs.Lookup(name)
			if f == nil {
				return Config{}, fmt.Errorf("config: flag --%s bound to %s does not exist", name, key)
			}
			if f.Changed {
				if err := v.BindPFlag(key, f); err != nil {
					return Config{}, fmt.Errorf("config: bind --%s: %w", name, err)
				}
			}
		}
	}

	var c Config
	if err := v.Unmarshal(&c, viper.DecodeHook(mapstructure.ComposeDecodeHookFunc(
		durationHook, mapstructure.StringToSliceHookFunc(","),
	))); err != nil {
		return Config{}, fmt.Errorf("%w: %s", ErrInvalid, decodeMessage(err))
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Validate checks every value; the error names the key, the value and what
// is allowed.
func (c Config) Validate() error {
	var errs []string
	bad := func(key string, val any, want string) {
		errs = append(errs, fmt.Sprintf("%s: %v is not valid, %s", key, val, want))
	}
	if c.Node.Name != "" && !nameRE.MatchString(c.Node.Name) {
		bad("node.name", fmt.Sprintf("%q", c.Node.Name), "use letters, digits, '.', '_' or '-' (at most 63)")
	}
	if c.Node.Role != "worker" && c.Node.Role != "witness" {
		bad("node.role", fmt.Sprintf("%q", c.Node.Role), "use worker or witness")
	}
	if net.ParseIP(c.Node.Bind) == nil {
		bad("node.bind", fmt.Sprintf("%q", c.Node.Bind), "give an IP address such as 0.0.0.0 or 10.0.0.5")
	}
	for _, j := range c.Node.Join {
		host := j
		if h, _, err := net.SplitHostPort(j); err == nil {
			host = h
		}
		if host == "" {
			bad("node.join", fmt.Sprintf("%q", j), "give IP or IP:PORT entries")
		}
	}
	if !filepath.IsAbs(c.Node.KeyFile) {
		bad("node.key_file", fmt.Sprintf("%q", c.Node.KeyFile), "give an absolute path")
	}
	if c.Node.Preset != "lan" && c.Node.Preset != "fast" {
		bad("node.preset", fmt.Sprintf("%q", c.Node.Preset), "use lan or fast")
	}
	for key, p := range map[string]int{"ports.gossip": c.Ports.Gossip, "ports.raft": c.Ports.Raft, "ports.peer": c.Ports.Peer} {
		if p < 1 || p > 65535 {
			bad(key, p, "use a port between 1 and 65535")
		}
	}
	if c.Ports.Gossip == c.Ports.Raft || c.Ports.Gossip == c.Ports.Peer || c.Ports.Raft == c.Ports.Peer {
		bad("ports", fmt.Sprintf("%d/%d/%d", c.Ports.Gossip, c.Ports.Raft, c.Ports.Peer), "gossip, raft and peer need three different ports")
	}
	if !filepath.IsAbs(c.API.Socket) {
		bad("api.socket", fmt.Sprintf("%q", c.API.Socket), "give an absolute path")
	}
	if c.Transfer.RateLimit < 0 {
		bad("transfer.rate_limit", c.Transfer.RateLimit, "use bytes per second, 0 for no cap")
	}
	if c.Metrics.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			bad("metrics.listen", fmt.Sprintf("%q", c.Metrics.Listen), "use HOST:PORT, or empty to turn metrics off")
		}
	}
	if c.Balance.Low <= 0 || c.Balance.High <= c.Balance.Low {
		bad("balance.low/high", fmt.Sprintf("%g/%g", c.Balance.Low, c.Balance.High), "need 0 < low < high, e.g. 0.5 and 0.8")
	}
	if c.Balance.Window < 0 || c.Balance.MinInterval < 0 {
		bad("balance.window/min_interval", fmt.Sprintf("%s/%s", c.Balance.Window, c.Balance.MinInterval), "use positive durations")
	}
	if !filepath.IsAbs(c.Node.StateDir) {
		bad("node.state_dir", fmt.Sprintf("%q", c.Node.StateDir), "give an absolute path")
	}
	if c.CRIU.Path != "" && !filepath.IsAbs(c.CRIU.Path) {
		bad("criu.path", fmt.Sprintf("%q", c.CRIU.Path), "give an absolute path or leave it empty")
	}
	if !filepath.IsAbs(c.CRIU.Prefix) {
		bad("criu.prefix", fmt.Sprintf("%q", c.CRIU.Prefix), "give an absolute path")
	}
	if c.Checkpoint.Interval < 100*time.Millisecond {
		bad("checkpoint.interval", c.Checkpoint.Interval, "use 100ms or more (e.g. 5s)")
	}
	if c.Checkpoint.Retention < 1 {
		bad("checkpoint.retention", c.Checkpoint.Retention, "keep at least 1 epoch")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", fmt.Sprintf("%q", c.Log.Level), "use debug, info, warn or error")
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", fmt.Sprintf("%q", c.Log.Format), "use text or json")
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalid, strings.Join(errs, "; "))
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// durationHook turns strings into durations with an error that shows the
// accepted form; bare integers are refused because their unit is ambiguous.
func durationHook(from, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeOf(time.Duration(0)) {
		return data, nil
	}
	switch d := data.(type) {
	case string:
		v, err := time.ParseDuration(strings.TrimSpace(d))
		if err != nil {
			return nil, fmt.Errorf("%q is not a duration, write it like 500ms, 5s or 1m", d)
		}
		return v, nil
	case time.Duration:
		return d, nil
	case int, int64, float64:
		return nil, fmt.Errorf("%v has no unit, write it like 500ms, 5s or 1m", d)
	}
	return data, nil
}

// unknownKeys reports keys in the file that Config does not have.
func unknownKeys(v *viper.Viper, def Config) error {
	known := flatten(def)
	sections := map[string]bool{}
	for k := range known {
		if i := strings.IndexByte(k, '.'); i > 0 {
			sections[k[:i]] = true
		}
	}
	var unknown []string
	for _, k := range v.AllKeys() {
		if _, ok := known[k]; ok {
			continue
		}
		if sections[k] {
			unknown = append(unknown, k+" (a section, not a value)")
			continue
		}
		unknown = append(unknown, k)
	}
	if len(unknown) == 0 {
		return nil
	}
	return fmt.Errorf("unknown key %s (see config.example.yaml for the keys)", strings.Join(unknown, ", "))
}

// flatten lists every leaf of c as dotted mapstructure key -> value.
func flatten(c Config) map[string]any {
	out := map[string]any{}
	var walk func(prefix string, v reflect.Value)
	walk = func(prefix string, v reflect.Value) {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			key := f.Tag.Get("mapstructure")
			if key == "" || key == "-" {
				continue
			}
			if prefix != "" {
				key = prefix + "." + key
			}
			fv := v.Field(i)
			if fv.Kind() == reflect.Struct {
				walk(key, fv)
				continue
			}
			switch x := fv.Interface().(type) {
			case time.Duration:
				out[key] = x.String()
			default:
				out[key] = x
			}
		}
	}
	walk("", reflect.ValueOf(c))
	return out
}

// decodeMessage shortens mapstructure's multi-line errors to one line that
// names the key: "decoding failed ...: 'a.b' bad" becomes "a.b: bad".
func decodeMessage(err error) string {
	s := oneLine(err)
	if i := strings.Index(s, "error(s):"); i >= 0 {
		s = strings.TrimLeft(s[i+len("error(s):"):], "; ")
	}
	return decodeKeyRE.ReplaceAllString(s, "$1:")
}

var decodeKeyRE = regexp.MustCompile(`(?:error decoding )?'([a-z_.]+)':?`)

func oneLine(err error) string {
	s := strings.TrimSpace(err.Error())
	s = strings.ReplaceAll(s, "\n\n", "; ")
	return strings.ReplaceAll(s, "\n", "; ")
}
