package tui

import (
	"context"
	"errors"
	"io"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/colorprofile"
)

// Options are where the dashboard draws; zero values mean the process's
// terminal.
type Options struct {
	Input  io.Reader
	Output io.Writer
}

// Run shows the dashboard on the terminal until the operator quits or ctx
// ends. It logs to cfg.Logger only, never to the screen.
func Run(ctx context.Context, cfg Config, opts Options) error {
	m, err := New(cfg)
	if err != nil {
		return err
	}
	defer m.Close()
	popts := []tea.ProgramOption{tea.WithContext(ctx)}
	if opts.Input != nil {
		popts = append(popts, tea.WithInput(opts.Input))
	}
	if opts.Output != nil {
		popts = append(popts, tea.WithOutput(opts.Output))
	}
	if m.cfg.NoColor {
		popts = append(popts, tea.WithColorProfile(colorprofile.Ascii))
	}
	_, err = tea.NewProgram(m, popts...).Run()
	if errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil {
		// Ended by ctx (a signal): not a failure of the dashboard.
		return nil
	}
	return err
}

// Close ends the event stream of the model.
func (m *Model) Close() {
	if m.stream != nil {
		m.stream.Close()
		m.stream = nil
	}
}
