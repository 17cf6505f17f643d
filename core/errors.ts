/** A problem with what the user asked for: shown as one line, mapped to an HTTP status by the server. */
export class UserError extends Error {
  override name = 'UserError';
  constructor(
    message: string,
    readonly kind: 'bad-request' | 'not-found' | 'conflict' = 'bad-request',
  ) {
    super(message);
  }
}
