package config

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

type sample struct {
	Name  string   `yaml:"name"`
	Addr  string   `yaml:"addr"`
	Join  []string `yaml:"join"`
	Max   int      `yaml:"max"`
	Fast  bool     `yaml:"fast"`
	Rate  float64  `yaml:"rate"`
	Inner struct {
		Key string `yaml:"key"`
	} `yaml:"inner"`
}

func defaults() sample {
	return sample{Name: "default", Addr: "127.0.0.1:1", Join: []string{"a"}, Max: 2, Rate: 10}
}

func write(t *testing.T, body string) string {
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad(t *testing.T) {
	cases := []struct {
		name, body string
		want       func(*sample)
		err        string
	}{
		{name: "empty file keeps the defaults", body: "", want: func(*sample) {}},
		{name: "keys override, others stay", body: "name: n1\ninner: {key: k}\n", want: func(s *sample) { s.Name, s.Inner.Key = "n1", "k" }},
		{name: "a list replaces the default list", body: "join: [x, y]\n", want: func(s *sample) { s.Join = []string{"x", "y"} }},
		{name: "unknown key", body: "name: n1\nnmae: typo\n", err: "line 2: field nmae not found"},
		{name: "unknown nested key", body: "inner: {kee: k}\n", err: "field kee not found"},
		{name: "wrong type", body: "max: many\n", err: "cannot unmarshal"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := defaults()
			err := Load(write(t, tc.body), &got)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := defaults()
			tc.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v, want %+v", got, want)
			}
		})
	}
	s := defaults()
	if err := Load("", &s); err != nil || !reflect.DeepEqual(s, defaults()) {
		t.Fatalf("no file: %v %+v", err, s)
	}
	if err := Load(filepath.Join(t.TempDir(), "missing.yaml"), &s); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing file: %v", err)
	}
}

// Flags given on the command line win over the file; flags not given (or empty) leave the
// file's values.
func TestOverrides(t *testing.T) {
	cases := []struct {
		name string
		args []string
		file string
		want func(*sample)
	}{
		{name: "no flags: the file", file: "name: file\nmax: 5\n", want: func(s *sample) { s.Name, s.Max = "file", 5 }},
		{name: "flags beat the file", args: []string{"--name", "flag", "--max", "7", "--join", "p, q,,r", "--fast", "--rate", "0"},
			file: "name: file\nmax: 5\njoin: [f]\n",
			want: func(s *sample) { s.Name, s.Max, s.Join, s.Fast, s.Rate = "flag", 7, []string{"p", "q", "r"}, true, 0 }},
		{name: "empty values are not given", args: []string{"--name=", "--join", " , ", "--max", "0", "--fast=false"},
			file: "name: file\nfast: true\n", want: func(s *sample) { s.Name, s.Fast = "file", true }},
		{name: "the last of a repeated flag wins", args: []string{"--name", "a", "--name", "b"}, want: func(s *sample) { s.Name = "b" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			got := defaults()
			o := NewOverrides(fs)
			o.String("name", &got.Name, "")
			o.List("join", &got.Join, "")
			o.Int("max", &got.Max, "")
			o.True("fast", &got.Fast, "")
			o.Float("rate", func(f float64) { got.Rate = f }, "")
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if err := Load(write(t, tc.file), &got); err != nil {
				t.Fatal(err)
			}
			o.Apply()
			want := defaults()
			tc.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v, want %+v", got, want)
			}
		})
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	var n int
	NewOverrides(fs).Int("max", &n, "")
	if err := fs.Parse([]string{"--max", "lots"}); err == nil {
		t.Fatal("a bad number was accepted")
	}
}

func TestParse(t *testing.T) {
	file := write(t, "name: file\nmax: 5\n")
	cases := []struct {
		name string
		args []string
		done bool
		err  string
		want func(*sample)
	}{
		{name: "file then flags", args: []string{"--config", file, "--name", "flag"}, want: func(s *sample) { s.Name, s.Max = "flag", 5 }},
		{name: "no file", args: []string{"--max", "9"}, want: func(s *sample) { s.Max, s.Addr = 9, "from-between" }},
		{name: "version", args: []string{"--version"}, done: true},
		{name: "help", args: []string{"-h"}, done: true},
		{name: "stray argument", args: []string{"oops"}, done: true, err: `unexpected argument "oops"`},
		{name: "unknown flag", args: []string{"--nope"}, done: true, err: "not defined"},
		{name: "bad file", args: []string{"--config", write(t, "nmae: x\n")}, done: true, err: "field nmae not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.SetOutput(new(strings.Builder))
			got := defaults()
			o := NewOverrides(fs)
			o.String("name", &got.Name, "")
			o.Int("max", &got.Max, "")
			done, err := o.Parse(tc.args, &got, func() {
				if got.Max == 2 {
					got.Addr = "from-between" // runs after the file, before the flags
				}
			})
			if done != tc.done || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("done %v err %v, want done %v err %q", done, err, tc.done, tc.err)
			}
			if tc.want != nil {
				want := defaults()
				tc.want(&want)
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("got %+v, want %+v", got, want)
				}
			}
		})
	}
}
