namespace Mola;

/// <summary>Opening a file the user named: a missing or unreadable file is an error naming it, not an IOException.</summary>
public static class InputFile
{
    public static FileStream OpenRead(string path)
    {
        try { return File.OpenRead(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw CannotRead(path, e); }
    }

    public static byte[] ReadAllBytes(string path)
    {
        if (!File.Exists(path)) throw new MolaException($"{path}: not found");
        try { return File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw CannotRead(path, e); }
    }

    static MolaException CannotRead(string path, Exception e) => new($"{path}: cannot be read ({e.Message.TrimEnd('.')})");
}
