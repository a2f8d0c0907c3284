<#
.SYNOPSIS
    Where a restore test stands, in the host's own record: its recovery job, the recovered files, the copy
    and its heartbeat.
.DESCRIPTION
    Read-only and safe to repeat. The recovery is the newest Recovery job (Get-WBJob, Get-WBJob -Previous)
    started at or after SinceUtc. The copy is found by its name; its heartbeat is the Heartbeat integration
    service's primary status, found by its language-independent id. Windows keeps no record of the moment
    a heartbeat first answered: with -WaitSeconds the answer comes within a second of the change, so the
    answer's clock_utc is that moment as closely as the host can tell.
.PARAMETER Folder
    The test's folder (Start-HvbRestoreTest's).
.PARAMETER CopyName
    The copy's name (Start-HvbRestoreCopy's).
.PARAMETER SinceUtc
    The test's start (ISO 8601, UTC).
.PARAMETER WaitSeconds
    Wait on the host, up to this many seconds, until what the caller saw (Seen) changes, then answer. 0: at once.
.PARAMETER Seen
    The change_key of the caller's previous answer.
.OUTPUTS
    One JSON document: clock_utc; host_job (the job holding the host, with job_type) or null; recovery (job_state,
    hresult, error_description, start_time_utc, end_time_utc, ...) or null; files (under Folder); copy (id, name,
    state, uptime_seconds, path, network_connected, heartbeat) or null; change_key.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $Folder,
    [Parameter(Mandatory)] [string] $CopyName,
    [Parameter(Mandatory)] [string] $SinceUtc,
    [int] $WaitSeconds = 0,
    [string] $Seen = ''
)
$since = ([datetime]::Parse($SinceUtc, [Globalization.CultureInfo]::InvariantCulture, [Globalization.DateTimeStyles]::AdjustToUniversal)).ToLocalTime()
$heartbeatId = '84EAAE65-2F2E-45F5-9BB5-0E857DC8EB47'  # Microsoft:<VM id>\<this>: the same in every language
$look = {
    $running = Get-WBJob
    $running = $(if ($running -and "$($running.JobState)" -eq 'Running') { $running } else { $null })
    $recovery = @(@($running) + @(Get-WBJob -Previous 5) | Where-Object { $_ -and "$($_.JobType)" -eq 'Recovery' -and $_.StartTime -ge $since } |
        Sort-Object -Property StartTime) | Select-Object -Last 1
    $copy = Get-VM -Name $CopyName -ErrorAction SilentlyContinue
    $heartbeat = $(if ($copy) { Get-VMIntegrationService -VM $copy | Where-Object { "$($_.Id)".EndsWith($heartbeatId) } })
    $files = @(Get-ChildItem -LiteralPath $Folder -Recurse -File -ErrorAction SilentlyContinue | ForEach-Object { $_.FullName })
    $key = @(
        $(if ($running) { "$($running.StartTime.ToUniversalTime().ToString('o')) $($running.JobState)" } else { '-' }),
        $(if ($copy) { "$($copy.State) $($heartbeat.PrimaryStatusDescription)" } else { '-' }),
        "$($files.Count)"
    ) -join '|'
    @{ running = $running; recovery = $recovery; copy = $copy; heartbeat = $heartbeat; files = $files; key = $key }
}
$seen = & $look
$deadline = (Get-Date).AddSeconds($WaitSeconds)
while ($WaitSeconds -gt 0 -and $seen.key -eq $Seen -and (Get-Date) -lt $deadline) {
    Start-Sleep -Milliseconds 500
    $seen = & $look
}
$jobJson = {
    param($job) @{ job_state = "$($job.JobState)"; job_type = "$($job.JobType)"; hresult = $job.HResult; error_description = "$($job.ErrorDescription)"
                   operation = "$($job.CurrentOperation)"; start_time_utc = $job.StartTime.ToUniversalTime().ToString('o')
                   end_time_utc = $(if ($job.EndTime -and $job.EndTime.Year -gt 1601) { $job.EndTime.ToUniversalTime().ToString('o') } else { $null }) }
}
@{
    clock_utc = (Get-Date).ToUniversalTime().ToString('o')
    host_job = $(if ($seen.running) { & $jobJson $seen.running } else { $null })
    recovery = $(if ($seen.recovery) { & $jobJson $seen.recovery } else { $null })
    files = $seen.files
    copy = $(if ($seen.copy) { @{ id = "$($seen.copy.Id)"; name = $seen.copy.Name; state = "$($seen.copy.State)"; uptime_seconds = [int64]$seen.copy.Uptime.TotalSeconds
                                  path = $seen.copy.Path; network_connected = @(Get-VMNetworkAdapter -VM $seen.copy | Where-Object { $_.SwitchName }).Count -gt 0
                                  heartbeat = "$($seen.heartbeat.PrimaryStatusDescription)" } } else { $null })
    change_key = $seen.key
}
