/**
 * werkbank in JupyterLab.
 *
 * - The session's time left (its Slurm job's walltime) in the status bar, and notifications
 *   before Slurm ends the job (15 and 5 minutes, by default) and before the hub stops an idle
 *   server, each with a "Save all" button.
 * - Launcher cards for the lifecycle templates (with their description as tooltip) that copy the
 *   template into the user's workspace and open the copy in this JupyterLab; a card for the
 *   MLflow UI.
 * - In a workshop, the trainers' messages as notifications (GET werkbank/broadcast).
 *
 * Everything comes from the werkbank server extension: GET werkbank/session (times, settings) and
 * GET werkbank/templates (the catalogue); a copy is POST werkbank/templates/<id>/copy.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { MainAreaWidget, IFrame, Notification } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ILauncher } from '@jupyterlab/launcher';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

/** What GET werkbank/session answers (werkbank_lab.session.SessionInfo). */
interface ISessionInfo {
  job_id: string;
  ends_at: number | null;
  profile: string;
  idle_timeout: number | null;
  walltime_warnings: number[];
  idle_warning: number;
  mlflow_ui: string;
  mlflow_new_tab: boolean;
  launcher_category: string;
  template_cards: boolean;
  mlflow_card: boolean;
  course: string;
}

/** What GET werkbank/broadcast answers: the course's latest message, or {}. */
interface IBroadcast {
  course?: string;
  message?: string;
  by?: string;
  at?: string;
}

/** One template of GET werkbank/templates. */
interface ITemplate {
  id: string;
  phase: number;
  phase_name: string;
  title: string;
  description: string;
  runtime: string;
  runtime_minutes: number | null;
}

const templateIcon = new LabIcon({
  name: 'werkbank:template',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="24" height="24">' +
    '<path fill="#f57c00" d="M6 2h9l5 5v15H6z"/><path fill="#ffe0b2" d="M15 2v5h5z"/>' +
    '<path fill="#fff" d="M9 11h8v1.5H9zm0 3h8v1.5H9zm0 3h5v1.5H9z"/></svg>'
});

const mlflowIcon = new LabIcon({
  name: 'werkbank:mlflow',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="24" height="24">' +
    '<path fill="none" stroke="#0194e2" stroke-width="2" d="M3 3v18h18"/>' +
    '<path fill="none" stroke="#43a047" stroke-width="2" stroke-linecap="round" d="M6 17l4-5 3 3 6-8"/></svg>'
});

/** A JSON request to the werkbank server extension. */
async function request<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  if (!response.ok) {
    let message = text;
    try {
      message = JSON.parse(text).message || text;
    } catch {
      // not JSON: the text as it is
    }
    throw new Error(`${path}: ${response.status} ${message}`);
  }
  return JSON.parse(text) as T;
}

let sessionRequest: Promise<ISessionInfo> | null = null;

/** GET werkbank/session, asked once for both plugins (the clock asks again now and then);
 * null, with a note in the console, where the server extension does not answer. */
async function sessionInfo(): Promise<ISessionInfo | null> {
  sessionRequest = sessionRequest ?? request<ISessionInfo>('werkbank/session');
  try {
    return await sessionRequest;
  } catch (error) {
    console.warn('werkbank: no session information', error);
    return null;
  }
}

/** "3:41" (hours:minutes) or "12 min" for what is left. */
export function formatLeft(seconds: number): string {
  if (seconds <= 0) {
    return '0 min';
  }
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) {
    return `${minutes} min`;
  }
  const hours = Math.floor(minutes / 60);
  return `${hours}:${String(minutes % 60).padStart(2, '0')} h`;
}

/** The walltime warning to show now: the smallest threshold (minutes) already reached, once. */
export function dueWarning(
  secondsLeft: number,
  thresholds: number[],
  shown: Set<number>
): number | null {
  const reached = thresholds
    .filter(minutes => secondsLeft <= minutes * 60)
    .sort((a, b) => a - b);
  if (reached.length === 0 || shown.has(reached[0])) {
    return null;
  }
  return reached[0];
}

class TimeLeft extends Widget {
  constructor() {
    super();
    this.addClass('werkbank-TimeLeft');
    this.node.id = 'werkbank-time-left';
  }

  show_(info: ISessionInfo, secondsLeft: number): void {
    this.node.textContent = `Walltime: ${formatLeft(secondsLeft)} left`;
    const ends = new Date((info.ends_at as number) * 1000);
    this.node.title =
      `Slurm job ${info.job_id} (${info.profile}) ends at ${ends.toLocaleTimeString()}: ` +
      'save your work before then.';
    this.toggleClass('werkbank-soon', secondsLeft <= 15 * 60);
    this.toggleClass('werkbank-very-soon', secondsLeft <= 5 * 60);
  }
}

function saveAllAction(app: JupyterFrontEnd) {
  return {
    label: 'Save all',
    callback: () => {
      void app.commands.execute('docmanager:save-all');
    }
  };
}

/** The session clock: time left, walltime and idle warnings. */
const sessionPlugin: JupyterFrontEndPlugin<void> = {
  id: '@werkbank/lab:session',
  description: "The session's time left in the status bar; warnings before it ends.",
  autoStart: true,
  optional: [IStatusBar],
  activate: async (app: JupyterFrontEnd, statusBar: IStatusBar | null) => {
    const known = await sessionInfo();
    if (known === null) {
      return;
    }
    let info: ISessionInfo = known;
    const item = new TimeLeft();
    if (statusBar && info.ends_at !== null) {
      statusBar.registerStatusItem('@werkbank/lab:time-left', {
        item,
        align: 'left',
        rank: 0
      });
    }
    const shown = new Set<number>();
    let idleWarned = false;

    const tick = () => {
      if (info.ends_at !== null) {
        const left = info.ends_at - Date.now() / 1000;
        item.show_(info, left);
        const due = dueWarning(left, info.walltime_warnings, shown);
        if (due !== null) {
          info.walltime_warnings.filter(m => m >= due).forEach(m => shown.add(m));
          Notification.warning(
            `Your session ends in ${formatLeft(left)}: Slurm stops job ${info.job_id} at its walltime. ` +
              'Save your work now.',
            { autoClose: false, actions: [saveAllAction(app)] }
          );
        }
      }
    };
    const checkIdle = async () => {
      if (info.idle_timeout === null) {
        return;
      }
      const status = await request<{ last_activity: string }>('api/status');
      const idle = (Date.now() - Date.parse(status.last_activity)) / 1000;
      const left = info.idle_timeout - idle;
      if (left <= info.idle_warning * 60 && !idleWarned) {
        idleWarned = true;
        Notification.warning(
          `This server has been idle for ${formatLeft(idle)} and will be stopped in about ` +
            `${formatLeft(left)} to free its resources. Run something, or save your work.`,
          { autoClose: false, actions: [saveAllAction(app)] }
        );
      } else if (left > info.idle_warning * 60) {
        idleWarned = false; // active again: warn again next time
      }
    };
    tick();
    window.setInterval(tick, 15_000);
    window.setInterval(() => void checkIdle().catch(console.warn), 60_000);
    void checkIdle().catch(console.warn);
    if (info.course) {
      watchBroadcasts(info.course);
    }
    // Slurm's word on the end again now and then (an admin may extend the walltime).
    window.setInterval(async () => {
      try {
        info = { ...info, ...(await request<ISessionInfo>('werkbank/session')) };
      } catch (error) {
        console.warn('werkbank: session information', error);
      }
    }, 300_000);
  }
};

/** Seconds between two looks for a trainer's message (the server asks the hub at most every 10 s). */
const BROADCAST_POLL_S = 20;

/** A workshop's trainers' messages as notifications, each once (also across reloads). */
function watchBroadcasts(course: string): void {
  const seenKey = `werkbank:broadcast-seen:${course}`;
  const look = async () => {
    const latest = await request<IBroadcast>('werkbank/broadcast');
    if (!latest.message || !latest.at || localStorage.getItem(seenKey) === latest.at) {
      return;
    }
    localStorage.setItem(seenKey, latest.at);
    Notification.info(`${latest.by ?? 'Your trainer'} (course ${course}): ${latest.message}`, {
      autoClose: false
    });
  };
  void look().catch(console.warn);
  window.setInterval(() => void look().catch(console.warn), BROADCAST_POLL_S * 1000);
}

/** Launcher cards: templates (copy, then open here) and the MLflow UI. */
const launcherPlugin: JupyterFrontEndPlugin<void> = {
  id: '@werkbank/lab:launcher',
  description: 'Launcher cards that copy a template and open the copy; the MLflow UI.',
  autoStart: true,
  requires: [ILauncher],
  activate: async (app: JupyterFrontEnd, launcher: ILauncher) => {
    const known = await sessionInfo();
    if (known === null) {
      return;
    }
    let info: ISessionInfo = known;
    app.commands.addCommand('werkbank:open-template', {
      label: args => String(args.label ?? 'Open a werkbank template'),
      caption: args => String(args.caption ?? ''),
      icon: templateIcon,
      execute: async args => {
        const id = String(args.id);
        try {
          const copy = await request<{ path: string }>(
            `werkbank/templates/${encodeURIComponent(id)}/copy`,
            { method: 'POST' }
          );
          return await app.commands.execute('docmanager:open', { path: copy.path });
        } catch (error) {
          Notification.error(`Could not open template ${id}: ${error}`, { autoClose: false });
        }
      }
    });
    app.commands.addCommand('werkbank:open-mlflow', {
      label: 'MLflow UI',
      caption: 'Your experiments, runs and models',
      icon: mlflowIcon,
      execute: () => {
        const url = URLExt.join(ServerConnection.makeSettings().baseUrl, info.mlflow_ui);
        if (info.mlflow_new_tab) {
          window.open(url, '_blank', 'noopener');
          return;
        }
        const frame = new IFrame({
          sandbox: ['allow-scripts', 'allow-same-origin', 'allow-forms', 'allow-popups', 'allow-downloads']
        });
        frame.url = url;
        const widget = new MainAreaWidget({ content: frame });
        widget.id = 'werkbank-mlflow-ui';
        widget.title.label = 'MLflow';
        widget.title.icon = mlflowIcon;
        widget.title.closable = true;
        app.shell.add(widget, 'main');
      }
    });
    if (info.mlflow_card && info.mlflow_ui) {
      launcher.add({ command: 'werkbank:open-mlflow', category: info.launcher_category, rank: 100 });
    }
    if (!info.template_cards) {
      return;
    }
    let templates: ITemplate[] = [];
    try {
      templates = await request<ITemplate[]>('werkbank/templates');
    } catch (error) {
      console.warn('werkbank: no template catalogue', error);
    }
    for (const template of templates) {
      const name = template.phase_name.replace(/-/g, ' ');
      launcher.add({
        command: 'werkbank:open-template',
        args: {
          id: template.id,
          label: `${String(template.phase).padStart(2, '0')} ${name[0].toUpperCase()}${name.slice(1)}`,
          caption: `${template.title}: ${template.description} (${template.runtime})`
        },
        category: info.launcher_category,
        rank: template.phase
      });
    }
  }
};

export default [sessionPlugin, launcherPlugin];
