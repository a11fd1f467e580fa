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
 * - The current notebook as a Voila dashboard: "Open as dashboard" (a new tab) and "Share as
 *   dashboard…" (a dialog that lists, adds and revokes its shares with users, groups or a link:
 *   GET/POST werkbank/dashboards, DELETE werkbank/dashboards/<id>), from the palette, the
 *   notebook's context menu and its toolbar.
 *
 * Everything comes from the werkbank server extension: GET werkbank/session (times, settings) and
 * GET werkbank/templates (the catalogue); a copy is POST werkbank/templates/<id>/copy.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Clipboard,
  Dialog,
  ICommandPalette,
  IFrame,
  MainAreaWidget,
  Notification,
  showDialog,
  Toolbar,
  ToolbarButton
} from '@jupyterlab/apputils';
import { PathExt, URLExt } from '@jupyterlab/coreutils';
import { ILauncher } from '@jupyterlab/launcher';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon, launchIcon, shareIcon } from '@jupyterlab/ui-components';
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

/** A request that the server answered with an error: its status and its own words. */
class RequestError extends Error {
  constructor(
    path: string,
    readonly status: number,
    readonly reason: string
  ) {
    super(`${path}: ${status} ${reason}`);
  }
}

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
    throw new RequestError(path, response.status, message);
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

/** One share of GET werkbank/dashboards (werkbank_lab.dashboards, werkbank_spawner.dashboards). */
interface IShare {
  id: string;
  path: string;
  created: number;
  user?: string;
  group?: string;
  link?: boolean;
  /** Seconds since the epoch (links only). */
  expires?: number;
  /** Who joined through the link (links only). */
  joined?: string[];
  dashboard_url: string;
  share_url: string;
}

/** What GET, POST and DELETE werkbank/dashboards answer. */
interface ISharesReply {
  shares: IShare[];
  share?: IShare;
  /** A new link's absolute URL (POST with "link": true only). */
  url?: string;
}

/** The notebook in the main area, found by its shape: a document widget of an .ipynb file. */
function currentNotebook(app: JupyterFrontEnd): { widget: Widget; path: string } | null {
  const widget = app.shell.currentWidget;
  const path = (widget as unknown as { context?: { path?: unknown } } | null)?.context?.path;
  if (widget && typeof path === 'string' && path.endsWith('.ipynb')) {
    return { widget, path };
  }
  return null;
}

/** A notebook path as the server compares it: without leading or trailing slashes. */
function samePath(a: string, b: string): boolean {
  const strip = (p: string) => p.replace(/^\/+|\/+$/g, '');
  return strip(a) === strip(b);
}

/** Text to the system clipboard; the older way where the browser lacks the API (plain http). */
async function copyText(text: string): Promise<void> {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    Clipboard.copyToSystem(text);
  }
}

/** "user bob", "group clients", "link (expires 05/12/2025, 14:03:00, joined: a, b)". */
export function shareLabel(share: IShare): string {
  if (share.user) {
    return `user ${share.user}`;
  }
  if (share.group) {
    return `group ${share.group}`;
  }
  const expires =
    typeof share.expires === 'number' ? new Date(share.expires * 1000).toLocaleString() : '?';
  const joined = share.joined && share.joined.length > 0 ? share.joined.join(', ') : 'nobody yet';
  return `link (expires ${expires}, joined: ${joined})`;
}

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: { id?: string; className?: string; text?: string } = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (props.id) {
    node.id = props.id;
  }
  if (props.className) {
    node.className = props.className;
  }
  if (props.text !== undefined) {
    node.textContent = props.text;
  }
  node.append(...children);
  return node;
}

function button(label: string, className: string, id?: string): HTMLButtonElement {
  const node = element('button', { id, className: `jp-mod-styled ${className}`, text: label });
  node.type = 'button';
  return node;
}

/** The body of the share dialog: this notebook's shares, each with "Revoke"; a form to add one. */
class ShareBody extends Widget {
  constructor(private readonly path: string) {
    super();
    this.addClass('werkbank-share-dialog');
    const copyViewer = button('Copy', 'werkbank-share-copy');
    copyViewer.addEventListener('click', () => void copyText(this.viewerUrl.href));
    this.viewers.append('Viewers open: ', this.viewerUrl, ' ', copyViewer);
    this.viewers.hidden = true;
    this.viewerUrl.target = '_blank';
    this.viewerUrl.rel = 'noopener';
    for (const kind of ['user', 'group', 'link']) {
      this.kind.append(element('option', { text: kind }));
    }
    this.kind.addEventListener('change', () => this.kindChanged());
    this.add.addEventListener('click', () => void this.addShare());
    const copyLink = button('Copy', 'werkbank-share-copy');
    copyLink.addEventListener('click', () => void copyText(this.link.value));
    this.link.readOnly = true;
    this.newLink.append(
      element('div', { className: 'werkbank-share-line' }, this.link, copyLink),
      element('p', {
        text:
          'Anyone who opens this link while logged in to the hub can view this dashboard until it ' +
          'expires or you revoke it.'
      })
    );
    this.newLink.hidden = true;
    this.error.hidden = true;
    this.node.append(
      this.viewers,
      element('p', {
        className: 'werkbank-share-note',
        text:
          "Viewers see this notebook's results with the code hidden, while your session runs. " +
          'They cannot open your other notebooks, files, terminals or kernels.'
      }),
      this.list,
      element(
        'div',
        { className: 'werkbank-share-form werkbank-share-line' },
        this.kind,
        this.name,
        this.add
      ),
      this.error,
      this.newLink
    );
    this.kindChanged();
    this.list.append(
      element('li', { className: 'werkbank-share-empty werkbank-share-loading', text: 'Loading…' })
    );
    void this.run(() => request<ISharesReply>('werkbank/dashboards'));
  }

  protected onAfterAttach(): void {
    // The dialog takes Enter (in capture, on its node) as "Close": in the form it means "Add".
    document.addEventListener('keydown', this.onKeydown, true);
  }

  protected onBeforeDetach(): void {
    document.removeEventListener('keydown', this.onKeydown, true);
  }

  private readonly onKeydown = (event: KeyboardEvent) => {
    if (event.key === 'Enter' && (event.target === this.name || event.target === this.kind)) {
      event.preventDefault();
      event.stopPropagation();
      void this.addShare();
    }
  };

  private kindChanged(): void {
    const link = this.kind.value === 'link';
    this.name.disabled = link;
    this.name.hidden = link;
    this.name.placeholder = this.kind.value === 'group' ? 'group name' : 'user name';
  }

  private async addShare(): Promise<void> {
    const kind = this.kind.value;
    const name = this.name.value.trim();
    if (kind !== 'link' && !name) {
      this.showError(`Enter the ${kind}'s name.`);
      return;
    }
    const body =
      kind === 'link' ? { path: this.path, link: true } : { path: this.path, [kind]: name };
    const reply = await this.run(() =>
      request<ISharesReply>('werkbank/dashboards', { method: 'POST', body: JSON.stringify(body) })
    );
    if (reply) {
      this.name.value = '';
      this.newLinkId = reply.url && reply.share ? reply.share.id : null;
      this.link.value = reply.url ?? '';
      this.newLink.hidden = !reply.url;
    }
  }

  private async revoke(id: string): Promise<void> {
    await this.run(() =>
      request<ISharesReply>(`werkbank/dashboards/${encodeURIComponent(id)}`, { method: 'DELETE' })
    );
  }

  /** A request whose answer replaces the list; its error in the red line instead. */
  private async run(call: () => Promise<ISharesReply>): Promise<ISharesReply | null> {
    this.add.disabled = true;
    try {
      const reply = await call();
      this.error.hidden = true;
      this.error.textContent = '';
      this.render(reply.shares ?? []);
      return reply;
    } catch (error) {
      this.showError(error instanceof RequestError ? error.reason : String(error));
      const loading = this.list.querySelector('.werkbank-share-loading');
      if (loading) {
        loading.textContent = 'Could not load the shares.';
      }
      return null;
    } finally {
      this.add.disabled = false;
    }
  }

  private showError(message: string): void {
    this.error.textContent = message;
    this.error.hidden = false;
  }

  private render(all: IShare[]): void {
    const shares = all.filter(share => samePath(share.path, this.path));
    this.list.replaceChildren();
    for (const share of shares) {
      const revoke = button('Revoke', 'werkbank-share-revoke');
      revoke.title = 'Stop sharing this notebook with them';
      revoke.addEventListener('click', () => void this.revoke(share.id));
      const row = element(
        'li',
        { className: 'werkbank-share-row' },
        element('span', { className: 'werkbank-share-label', text: shareLabel(share) }),
        revoke
      );
      row.dataset.shareId = share.id;
      this.list.append(row);
    }
    if (shares.length === 0) {
      this.list.append(
        element('li', { className: 'werkbank-share-empty', text: 'This notebook is not shared.' })
      );
    }
    if (this.newLinkId !== null && !shares.some(share => share.id === this.newLinkId)) {
      // The new link was revoked: it opens nothing any more.
      this.newLinkId = null;
      this.link.value = '';
      this.newLink.hidden = true;
    }
    const named = shares.find(share => share.user || share.group);
    this.viewers.hidden = !named;
    if (named) {
      const url = location.origin + named.share_url;
      this.viewerUrl.href = url;
      this.viewerUrl.textContent = url;
    }
  }

  /** The share of the link shown under the form (its URL is known only when it is made). */
  private newLinkId: string | null = null;
  private readonly viewers = element('div', {
    className: 'werkbank-share-viewers werkbank-share-line'
  });
  private readonly viewerUrl = element('a', { id: 'werkbank-share-url' });
  private readonly list = element('ul', { className: 'werkbank-share-list' });
  private readonly kind = element('select', { id: 'werkbank-share-kind', className: 'jp-mod-styled' });
  private readonly name = element('input', { id: 'werkbank-share-name', className: 'jp-mod-styled' });
  private readonly add = button('Add', 'werkbank-share-add-button', 'werkbank-share-add');
  private readonly error = element('div', { className: 'werkbank-share-error' });
  private readonly newLink = element('div', { className: 'werkbank-share-newlink' });
  private readonly link = element('input', { id: 'werkbank-share-link', className: 'jp-mod-styled' });
}

const OPEN_DASHBOARD = 'werkbank:open-dashboard';
const SHARE_DASHBOARD = 'werkbank:share-dashboard';
const OPEN_CAPTION = 'Open this notebook as a Voila dashboard (code hidden) in a new browser tab';
const SHARE_CAPTION =
  'Share this notebook as a Voila dashboard (code hidden) with users, groups or a link';

/** A notebook as a Voila dashboard: open it in a new tab; share it with users, groups or a link. */
const dashboardsPlugin: JupyterFrontEndPlugin<void> = {
  id: '@werkbank/lab:dashboards',
  description: 'Open the current notebook as a Voila dashboard; share it with others.',
  autoStart: true,
  optional: [ICommandPalette],
  activate: async (app: JupyterFrontEnd, palette: ICommandPalette | null) => {
    if ((await sessionInfo()) === null) {
      return;
    }
    const isEnabled = () => currentNotebook(app) !== null;
    app.commands.addCommand(OPEN_DASHBOARD, {
      label: 'Open as dashboard',
      caption: OPEN_CAPTION,
      icon: launchIcon,
      isEnabled,
      execute: async () => {
        const notebook = currentNotebook(app);
        if (notebook === null) {
          return;
        }
        // Voila renders the file as saved.
        try {
          await app.commands.execute('docmanager:save');
        } catch (error) {
          Notification.warning(`Could not save ${notebook.path} first: ${error}`);
        }
        window.open(
          URLExt.join(
            ServerConnection.makeSettings().baseUrl,
            'voila/render',
            URLExt.encodeParts(notebook.path)
          ),
          '_blank',
          'noopener'
        );
      }
    });
    app.commands.addCommand(SHARE_DASHBOARD, {
      label: 'Share as dashboard…',
      caption: SHARE_CAPTION,
      icon: shareIcon,
      isEnabled,
      execute: async () => {
        const notebook = currentNotebook(app);
        if (notebook === null) {
          return;
        }
        await showDialog({
          title: `Share ${PathExt.basename(notebook.path)} as dashboard`,
          body: new ShareBody(notebook.path),
          buttons: [Dialog.okButton({ label: 'Close' })],
          focusNodeSelector: '#werkbank-share-name'
        });
      }
    });
    app.shell.currentChanged?.connect(() => {
      app.commands.notifyCommandChanged(OPEN_DASHBOARD);
      app.commands.notifyCommandChanged(SHARE_DASHBOARD);
    });

    if (palette) {
      palette.addItem({ command: OPEN_DASHBOARD, category: 'Werkbank' });
      palette.addItem({ command: SHARE_DASHBOARD, category: 'Werkbank' });
    }
    app.contextMenu.addItem({ command: OPEN_DASHBOARD, selector: '.jp-Notebook', rank: 60 });
    app.contextMenu.addItem({ command: SHARE_DASHBOARD, selector: '.jp-Notebook', rank: 61 });

    app.docRegistry.addWidgetExtension('Notebook', {
      createNew: panel => {
        const toolbar = (panel as unknown as { toolbar?: Toolbar }).toolbar;
        if (!toolbar) {
          return;
        }
        const run = (command: string) => () => {
          // The command acts on the current notebook: make it this one.
          app.shell.activateById(panel.id);
          void app.commands.execute(command);
        };
        const buttons = [
          new ToolbarButton({
            className: 'werkbank-open-dashboard-button',
            icon: launchIcon,
            tooltip: OPEN_CAPTION,
            onClick: run(OPEN_DASHBOARD)
          }),
          new ToolbarButton({
            className: 'werkbank-share-dashboard-button',
            icon: shareIcon,
            tooltip: SHARE_CAPTION,
            onClick: run(SHARE_DASHBOARD)
          })
        ];
        toolbar.insertItem(10, 'werkbank-open-dashboard', buttons[0]);
        toolbar.insertItem(11, 'werkbank-share-dashboard', buttons[1]);
        let disposed = false;
        return {
          get isDisposed() {
            return disposed;
          },
          dispose() {
            disposed = true;
            buttons.forEach(item => item.dispose());
          }
        };
      }
    });
  }
};

export default [sessionPlugin, launcherPlugin, dashboardsPlugin];
